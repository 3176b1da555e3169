r"""Regenerate the figures of docs/transfer.md: ImageNet MobileNetV2 vs its ELPV fine-tuned copy.

    .venv/bin/python docs/make_transfer_figures.py [--checkpoint PATH] [--max-images N]

Needs ``elpv-dataset==1.0.0.post1`` (pip install --no-deps; CC BY-NC-SA 4.0, read from the
installed package, never copied here). When the fine-tuned checkpoint is missing it is trained
first with the default settings of ``captum-topk finetune`` (a few minutes on 2 CPU cores).
The comparison runs on the validation images of the checkpoint's own split (whole modules
the model was not trained on; the test split stays for the accuracy alone), over every block of
MobileNetV2 (features.0 ... features.18), and writes the full report to
``results/transfer_compare/`` and three PNGs to ``docs/images/``:

* ``transfer_cka.png``: minibatch linear CKA (unbiased HSIC), blocks of the ImageNet model x
  blocks of the fine-tuned one;
* ``transfer_most_changed.png``: the 15 channels with the highest change score;
* ``transfer_changed_patches.png``: top-9 patches of the 4 most changed channels, before
  (ImageNet weights) and after fine-tuning, on the same held-out cells.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captum_topk.compare import compare_models, save_report
from captum_topk.compare.report import changed_patches_figure, cka_figure, most_changed_figure
from captum_topk.data.elpv import elpv_dataset  # noqa: E402
from captum_topk.models import load_checkpoint_state_dict, load_model  # noqa: E402
from captum_topk.viz.plot import save_png  # noqa: E402
from captum_topk.transfer import finetune_run, load_finetuned, model_blocks  # noqa: E402

DEFAULT_CKPT = ROOT / "checkpoints" / "mobilenet_v2-elpv-finetuned.pt"
MAX_BYTES = 400_000


def _save(image, path: Path) -> Path:
    save_png(image, path)
    if path.stat().st_size > MAX_BYTES:  # keep docs images small: reduce to 128 colours
        save_png(image.quantize(128).convert("RGB"), path)
    print(f"{path}  ({path.stat().st_size // 1024} KB)")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(DEFAULT_CKPT))
    ap.add_argument("--max-images", type=int, default=None, help="held-out images compared (default all)")
    ap.add_argument("--out", default=str(ROOT / "results" / "transfer_compare"))
    ap.add_argument("--images", default=str(ROOT / "docs" / "images"))
    args = ap.parse_args()

    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        print(f"{ckpt} missing: training it with the default `captum-topk finetune` settings")
        finetune_run(out=ckpt)
    _, meta = load_checkpoint_state_dict(str(ckpt))
    base, _ = load_model("mobilenet_v2-imagenet")
    tuned, info = load_finetuned(ckpt)
    dataset = elpv_dataset(info.transform, task=str(meta.get("dataset", "elpv/binary")).split("/")[-1])
    held_out = meta["split"]["val_index"]  # validation modules: never trained on
    if args.max_images:
        held_out = held_out[: args.max_images]
    images = dataset.subset(held_out)

    t0 = time.monotonic()
    cmp = compare_models(base, tuned, images, model_blocks(base), k=9, batch_size=32,
                         names=("ImageNet", "fine-tuned on ELPV"))
    print(f"compared on {cmp.n_images} validation cells in {time.monotonic() - t0:.0f} s")
    save_report(cmp, args.out, images_source=images, mean=info.mean, std=info.std, top=4,
                settings={"checkpoint": str(ckpt), "images": "validation split of the checkpoint",
                          "input_size": list(info.input_size), "resize_size": info.resize_size})
    out = Path(args.images)
    _save(cka_figure(cmp), out / "transfer_cka.png")
    _save(most_changed_figure(cmp), out / "transfer_most_changed.png")
    _save(changed_patches_figure(cmp, images, info.mean, info.std, top=4), out / "transfer_changed_patches.png")
    summary = {"linear_probe_val": meta["metrics"].get("linear_probe_val"),
               "linear_probe_test": meta["metrics"].get("linear_probe_test"),
               "finetuned_val": meta["metrics"].get("val"),
               "finetuned_test": meta["metrics"].get("test"),
               "selected_epoch": meta.get("epoch"),
               "most_changed": cmp.most_changed(8),
               "cka_diagonal": [float(cmp.cka[i, i]) for i in range(len(cmp.layers_a))]}
    print(json.dumps(summary, indent=1, default=str)[:4000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
