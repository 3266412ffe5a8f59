"""A study's executed notebooks, kept with their outputs beside a reference run (for the site that
shows them), their pictures made smaller on the way: a figure keeps its look, not its bytes."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image

#: Pictures wider or taller than this many pixels are scaled down (a page column is narrower).
MAX_SIDE_PX = 1600


def shrink_png(data: bytes, max_side: int = MAX_SIDE_PX) -> bytes:
    """A PNG no larger than `data`: scaled to fit `max_side`, its colours reduced to a 256-colour
    palette (figures and grey-level slices lose nothing visible); `data` itself when that is smaller."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if max(img.size) > max_side:
            scale = max_side / max(img.size)
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                             Image.Resampling.LANCZOS)
        if img.mode not in ("P", "L", "1"):
            # FASTOCTREE is the quantizer Pillow allows for images with an alpha channel.
            img = img.convert("RGBA").quantize(256, method=Image.Quantize.FASTOCTREE)
        out = io.BytesIO()
        img.save(out, format="PNG", optimize=True)
    return out.getvalue() if len(out.getvalue()) < len(data) else data


def shrink_notebook_images(nb: dict) -> dict:
    """The notebook (nbformat 4 JSON) with every PNG output passed through `shrink_png`, in place.
    Saved widget state is dropped: it holds live widgets' pictures, which no static page can use."""
    nb.get("metadata", {}).pop("widgets", None)
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png:
                text = "".join(png) if isinstance(png, list) else png
                output["data"]["image/png"] = base64.b64encode(shrink_png(base64.b64decode(text))).decode("ascii")
    return nb


def keep_executed_notebooks(study_dir: Path, dest: Path) -> list[str]:
    """Copy the study's finished notebooks (<study>/notebooks/NAME.ipynb with its NAME.done.json)
    into `dest`, their pictures shrunk; return their names in order (none: `dest` is not made)."""
    done = sorted(Path(study_dir, "notebooks").glob("*.done.json"))
    names = [p.name[: -len(".done.json")] for p in done if p.with_name(p.name[: -len(".done.json")] + ".ipynb").is_file()]
    if names:
        dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        nb = json.loads((Path(study_dir, "notebooks") / f"{name}.ipynb").read_text())
        (dest / f"{name}.ipynb").write_text(json.dumps(shrink_notebook_images(nb), indent=1, ensure_ascii=False))
    return names


__all__ = ["MAX_SIDE_PX", "shrink_png", "shrink_notebook_images", "keep_executed_notebooks"]
