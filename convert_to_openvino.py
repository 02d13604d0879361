"""The design card's converter entry point: `python convert_to_openvino.py --help`.

The converter lives in `lipsync.conversion` (checkpoints -> OpenVINO IR + manifest.json);
`lipsync convert` runs the same `main`.
"""

import sys

from lipsync.conversion.convert import main

if __name__ == "__main__":
    sys.exit(main())
