"""`qc bundle` (verify, show) and `qc package`: what a box is given."""

from __future__ import annotations

from pathlib import Path

from qc.registry import command

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "qc-inspect.service"


def _bundle_args(p):
    p.add_argument("action", choices=["verify", "show", "compile", "sign", "keygen"],
                   help="verify: hashes, version, tensors, signature, one inference; show: the card; compile: for "
                   "the Edge TPU with edgetpu_compiler (x86-64), recorded in the card beside the CPU model; sign: "
                   "with --key PRIVATE (after compile); keygen: a signing key pair into the folder given")
    p.add_argument("bundle", type=Path, nargs="?", help="bundle folder (default: the one --config names); keygen: "
                   "the folder for the keys")
    p.add_argument("--config", type=Path, help="edge YAML: verify its bundle with the backend and bundle_key it "
                   "selects, as the service does before it starts")
    p.add_argument("--key", type=Path, help="sign: the private key; verify: the public key to check the signature "
                   "against (default: the config's bundle_key)")


@command("bundle", "verify a model bundle, show its card, compile it for the Edge TPU, or sign it", _bundle_args)
def bundle(a):
    import numpy as np

    from edge import signing
    from edge.bundle import load_bundle
    from edge.classifiers import make_classifier
    from edge.config import load_config
    from edge.errors import EdgeError
    from edge.pipeline import check_references

    cfg = load_config(a.config, {"bundle": str(a.bundle)} if a.bundle else None) if a.config else None
    path = a.bundle or (cfg.bundle if cfg else None)
    if path is None:
        raise EdgeError("give a bundle folder (keygen: a folder for the keys), or --config naming one")
    if a.action == "keygen":
        return signing.keygen(path)
    if a.action == "compile":
        from training.edgetpu import compile_bundle

        return compile_bundle(path)
    if a.action == "sign":
        if a.key is None:
            raise EdgeError("sign needs --key PRIVATE_KEY (qc bundle keygen makes one)")
        load_bundle(path)  # only a bundle that verifies is signed
        return signing.sign(path, a.key)
    key = a.key or (cfg.bundle_key if cfg else None)
    b = load_bundle(path, key)
    if a.action == "show":
        return b.describe()
    backend = cfg.classifier.backend if cfg else "auto"
    clf = make_classifier(b, backend, cfg.classifier.num_threads if cfg else 1)
    check_references(b, clf)
    h, w = b.input_size
    result = clf.infer(np.full((h, w, 3), 128, np.uint8))
    return {"bundle": str(path), "ok": True, "backend": clf.name, "sha256": b.sha256, "labels": b.labels,
            "references": f"{len(b.card.references)} scored as at export",
            "signed_by": signing.public_key_id(key) if key else None,  # load_bundle verified the signature
            "gray_frame_scores": [round(float(s), 4) for s in result.scores]}


def _package_args(p):
    from qc.package import BOXES

    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--config", type=Path, required=True, help="edge YAML for the box")
    p.add_argument("--unit", type=Path, default=UNIT, help="systemd unit (default deploy/qc-inspect.service)")
    p.add_argument("--box", choices=list(BOXES), default="pi",
                   help="the box: its extras and, with --wheels, its Python and platform (host: this machine's)")
    p.add_argument("--wheels", action="store_true", help="also pack every dependency as a binary wheel for the box "
                   "(needs the package index here), so that it installs with none")
    p.add_argument("--out", type=Path, required=True, help="box.tar.gz to write")


@command("package", "pack what a box needs (bundle, config, unit, the project's wheel, install.sh; with --wheels "
         "every dependency) into a tar.gz with SHA256SUMS", _package_args)
def package(a):
    from qc.package import package as make_package

    return make_package(a.bundle, a.config, a.unit, a.out, a.box, a.wheels)
