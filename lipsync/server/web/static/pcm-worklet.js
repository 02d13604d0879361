// AudioWorklet: the microphone as 16-bit PCM chunks of `chunkSamples` samples (mono).
// Each message: {pcm: ArrayBuffer (Int16 little-endian), startFrame: the chunk's first
// sample in the AudioContext's timeline}.

class PcmChunker extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.size = options.processorOptions.chunkSamples;
    this.chunk = new Int16Array(this.size);
    this.filled = 0;
    this.startFrame = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const samples = channels[0].length;
    for (let i = 0; i < samples; i++) {
      if (this.filled === 0) this.startFrame = currentFrame + i;
      let sum = 0;
      for (const channel of channels) sum += channel[i];
      const value = Math.max(-1, Math.min(1, sum / channels.length));
      this.chunk[this.filled++] = value < 0 ? value * 0x8000 : value * 0x7fff;
      if (this.filled === this.size) {
        const pcm = this.chunk.buffer;
        this.port.postMessage({ pcm, startFrame: this.startFrame }, [pcm]);
        this.chunk = new Int16Array(this.size);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("pcm-chunker", PcmChunker);
