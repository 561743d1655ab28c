"""Security rules of #14, enforced: nothing on a load path unpickles (an AST scan of src/), a
malicious .pth is refused without running its payload. The server's rules (constant-time token,
size limits before decoding, CORS off) are in tests/serve/test_security.py."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

from medscope.cli import main
from medscope.errors import MedscopeError
from tests.conftest import make_image_folder

SRC = Path(__file__).resolve().parents[1] / "src" / "medscope"
PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve",
                    "marshal"}


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def pickle_violations(source: str, filename: str) -> list[str]:
    """Where ``source`` could unpickle: imports of pickling modules, ``torch.load`` without
    ``weights_only=True``, ``np.load``/``numpy.load`` with ``allow_pickle=True``,
    ``pandas.read_pickle``, ``torch.jit.load``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) \
                else [node.module or ""]
            found += [f"{where}: imports {n}" for n in names
                      if n.split(".")[0] in PICKLING_MODULES]
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner, attr = ast.unparse(node.func.value), node.func.attr
        if attr == "load" and owner == "torch":
            weights_only = _kw(node, "weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                found.append(f"{where}: torch.load without weights_only=True")
        if attr == "load" and owner in ("np", "numpy"):
            allow = _kw(node, "allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                found.append(f"{where}: np.load with allow_pickle")
        if attr == "read_pickle" or (attr == "load" and owner == "torch.jit"):
            found.append(f"{where}: {owner}.{attr}")
    return found


def test_no_load_path_in_src_can_unpickle():
    violations = [v for path in sorted(SRC.rglob("*.py"))
                  for v in pickle_violations(path.read_text(), str(path.relative_to(SRC)))]
    assert not violations, violations


@pytest.mark.parametrize("code", [
    "import pickle", "from joblib import load", "torch.load(p)",
    "torch.load(p, weights_only=False)", "np.load(p, allow_pickle=True)",
    "pd.read_pickle(p)", "torch.jit.load(p)"])
def test_the_scan_catches_each_way_to_unpickle(code):
    assert pickle_violations(code, "x.py")


class Payload:
    """Unpickling this creates ``marker``: what a malicious .pth would do with os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_pth(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pth"
    torch.save({"conv.weight": torch.zeros(1), "hook": Payload(marker)}, path)
    return path, marker


def test_the_payload_is_live_when_unpickled(tmp_path):
    """The control: plain unpickling does run such a payload (so the refusal below means it)."""
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(Payload(live)))
    assert live.exists()


def test_malicious_pth_is_refused_without_running_its_payload(tmp_path):
    from medscope.models.transfer import read_state_dict

    path, marker = _malicious_pth(tmp_path)
    with pytest.raises(MedscopeError, match="cannot read weights"):
        read_state_dict(path)
    assert not marker.exists()


def test_malicious_pth_as_pretrained_fails_the_run_cleanly(tmp_path, capsys):
    path, marker = _malicious_pth(tmp_path)
    data = make_image_folder(tmp_path / "data", per_class=4, size=16)
    code = main(["train", "-q", "--data", str(data), "--out", str(tmp_path / "run"),
                 "--model", "simple_cnn", "--img-size", "16", "--epochs", "1",
                 "--pretrained", str(path), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot read weights" in err and str(path) in err
    assert not marker.exists()
