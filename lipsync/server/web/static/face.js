// The face: an uploaded image/video or a registered avatar, with its face box drawn over it.

import { json } from "./api.js";

const $ = (id) => document.getElementById(id);

/** "t,b,l,r" -> [t, b, l, r] of integers, null when empty; throws on anything else. */
export function parseBox(text) {
  const trimmed = text.trim();
  if (!trimmed) return null;
  const box = trimmed.split(/[\s,]+/).map(Number);
  if (box.length !== 4 || !box.every((v) => Number.isInteger(v) && v >= 0)) {
    throw new Error(`The face box must be 4 whole numbers top,bottom,left,right; got "${trimmed}"`);
  }
  return box;
}

export class FacePicker {
  /** hooks: onChange(), onError(err), onBusy(seconds) */
  constructor(hooks) {
    this.hooks = hooks;
    this.file = null; // the uploaded File
    this.avatar = null; // metadata of the chosen avatar
    this.previews = new Map(); // avatar_id -> object URL of the file it was registered from
    $("face-file").addEventListener("change", () => this.chooseFile($("face-file").files[0]));
    $("register").addEventListener("click", () => this.register().catch(hooks.onError));
    $("refresh-avatars").addEventListener("click", () => this.refresh().catch(hooks.onError));
    window.addEventListener("resize", () => this.drawBox());
  }

  /** What /api/generate and a live `start` need: {avatarId} or {file, box}; null if none. */
  get choice() {
    if (this.avatar) return { avatarId: this.avatar.avatar_id };
    if (this.file) return { file: this.file, box: parseBox($("face-box").value) };
    return null;
  }

  get ready() {
    return this.choice !== null;
  }

  chooseFile(file) {
    this.file = file ?? null;
    this.avatar = null;
    $("register").disabled = !file;
    $("face-info").textContent = file ? `${file.name}: not registered yet` : "";
    this.show(file ? URL.createObjectURL(file) : null, file?.type.startsWith("video/"));
    this.markCurrent();
    this.hooks.onChange();
  }

  async register() {
    const box = parseBox($("face-box").value);
    const form = new FormData();
    form.append(this.file.type.startsWith("video/") ? "video" : "image", this.file);
    if (box) form.append("box", box.join(","));
    $("register").disabled = true;
    $("face-info").textContent = "Detecting the face…";
    try {
      const meta = await json("api/avatars", { method: "POST", body: form }, this.hooks);
      this.previews.set(meta.avatar_id, { url: URL.createObjectURL(this.file), video: meta.kind === "video" });
      await this.refresh();
      this.select(meta);
    } finally {
      $("register").disabled = !this.file;
      if ($("face-info").textContent === "Detecting the face…") $("face-info").textContent = "";
    }
  }

  async refresh() {
    const { avatars } = await json("api/avatars", {}, this.hooks);
    this.avatars = avatars;
    const list = $("avatars");
    list.replaceChildren(
      ...avatars.map((meta) => {
        const item = document.createElement("li");
        item.dataset.avatarId = meta.avatar_id;
        const id = document.createElement("code");
        id.textContent = `${meta.avatar_id.slice(0, 8)}… ${meta.kind} ${meta.width}×${meta.height}`;
        const use = button("Use", `Use avatar ${meta.avatar_id}`, () => this.select(meta));
        const del = button("Delete", `Delete avatar ${meta.avatar_id}`, () =>
          this.remove(meta.avatar_id).catch(this.hooks.onError),
        );
        del.className = "danger";
        item.append(id, use, del);
        return item;
      }),
    );
    if (!avatars.length) list.innerHTML = '<li class="muted">None yet.</li>';
    this.markCurrent();
  }

  select(meta) {
    this.avatar = meta;
    const preview = this.previews.get(meta.avatar_id);
    this.show(preview?.url ?? null, preview?.video);
    const [t, b, l, r] = meta.boxes[0];
    $("face-info").textContent =
      `Avatar ${meta.avatar_id} (${meta.kind}, ${meta.width}×${meta.height}, ` +
      `${meta.num_frames} frame${meta.num_frames > 1 ? "s" : ""}): face at top ${t}, bottom ${b}, left ${l}, right ${r}`;
    this.markCurrent();
    this.drawBox();
    this.hooks.onChange();
  }

  async remove(avatarId) {
    await json(`api/avatars/${avatarId}`, { method: "DELETE" }, this.hooks);
    if (this.avatar?.avatar_id === avatarId) {
      this.avatar = null;
      $("face-info").textContent = "";
      this.show(this.file ? URL.createObjectURL(this.file) : null, this.file?.type.startsWith("video/"));
    }
    await this.refresh();
    this.hooks.onChange();
  }

  show(url, isVideo) {
    const image = $("face-image");
    const video = $("face-video");
    image.hidden = !url || isVideo;
    video.hidden = !url || !isVideo;
    $("face-empty").hidden = Boolean(url) || Boolean(this.avatar);
    const media = isVideo ? video : image;
    if (url) {
      media.src = url;
      media.addEventListener(isVideo ? "loadeddata" : "load", () => this.drawBox(), { once: true });
      if (isVideo) video.play().catch(() => {});
    }
    this.drawBox();
  }

  /** The chosen avatar's first face box over the preview (or over an empty frame). */
  drawBox() {
    const canvas = $("face-overlay");
    const ctx = canvas.getContext("2d");
    const image = $("face-image");
    const video = $("face-video");
    const media = !image.hidden ? image : !video.hidden ? video : null;
    const meta = this.avatar;
    const stage = $("face-stage");
    const width = media ? media.clientWidth : meta ? Math.min(stage.clientWidth, 320) : 0;
    const height = media ? media.clientHeight : meta ? (width * meta.height) / meta.width : 0;
    canvas.width = width;
    canvas.height = height;
    canvas.style.left = `${media ? media.offsetLeft : (stage.clientWidth - width) / 2}px`;
    canvas.style.top = `${media ? media.offsetTop : (stage.clientHeight - height) / 2}px`;
    ctx.clearRect(0, 0, width, height);
    if (!meta || !width) return;
    if (!media) {
      ctx.strokeStyle = "#888";
      ctx.strokeRect(0.5, 0.5, width - 1, height - 1);
    }
    const [t, b, l, r] = meta.boxes[0];
    const sx = width / meta.width;
    const sy = height / meta.height;
    ctx.lineWidth = 3;
    ctx.strokeStyle = "#2ee86b";
    ctx.strokeRect(l * sx, t * sy, (r - l) * sx, (b - t) * sy);
  }

  markCurrent() {
    for (const item of $("avatars").children) {
      item.setAttribute("aria-current", String(item.dataset.avatarId === this.avatar?.avatar_id));
    }
  }
}

function button(text, label, onClick) {
  const el = document.createElement("button");
  el.type = "button";
  el.textContent = text;
  el.setAttribute("aria-label", label);
  el.addEventListener("click", onClick);
  return el;
}
