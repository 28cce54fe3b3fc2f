"""Fetch the real data that exists offline into a data folder (SPEC §8). Nothing here is needed by the tests.

    python experiments/fetch_data.py [--data data]

From Debian's ``opencv-doc`` package (``apt-get download``, no root needed to unpack):
  * ``<data>/pets2009/vtest.avi``: PETS2009 S2L1 View_001 (795 frames, 768×576), the sequence OpenCV ships;
  * ``<data>/PPM-100/image/plant.jpg`` and ``matte/plant.png``: OpenCV's alpha-matting example, a stand-in
    image/matte pair in the PPM-100 layout.
Exits non-zero with a message when apt-get or dpkg-deb is unavailable; the experiments then run on the rest.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

MEMBERS = {
    "./usr/share/doc/opencv-doc/examples/data/vtest.avi": "pets2009/vtest.avi",
    "./usr/share/doc/opencv-doc/examples/alphamat/input_images/plant.jpg": "PPM-100/image/plant.jpg",
    "./usr/share/doc/opencv-doc/examples/alphamat/output_mattes/plant_result.png": "PPM-100/matte/plant.png",
}


def fetch(data: Path) -> list[Path]:
    if all((data / target).exists() for target in MEMBERS.values()):
        return [data / target for target in MEMBERS.values()]
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not available: fetch opencv-doc's examples by hand (see SPEC §8)")
    with tempfile.TemporaryDirectory() as tmp:
        download = subprocess.run(["apt-get", "download", "opencv-doc"], cwd=tmp, capture_output=True, text=True)
        if download.returncode != 0:
            raise RuntimeError(f"apt-get download opencv-doc failed (try 'apt-get update' first): {download.stderr}")
        deb = next(Path(tmp).glob("opencv-doc_*.deb"))
        tar_path = Path(tmp) / "data.tar"
        with open(tar_path, "wb") as out:
            subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=out, check=True)
        written = []
        with tarfile.open(tar_path) as archive:
            for member, target in MEMBERS.items():
                source = archive.extractfile(member)
                if source is None:
                    raise RuntimeError(f"{member} is missing from {deb.name}")
                path = data / target
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(source.read())
                written.append(path)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data"), help="data folder (default: ./data)")
    args = parser.parse_args()
    try:
        for path in fetch(args.data):
            print(f"{path} ({path.stat().st_size:,} bytes)")
    except (RuntimeError, subprocess.CalledProcessError, OSError) as error:
        print(f"fetch_data: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
