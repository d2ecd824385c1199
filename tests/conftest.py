"""Shared pytest fixtures.

Triton kernels run on the CPU under the interpreter: TRITON_INTERPRET=1 is set here before
anything imports triton, unless the caller set it (a GPU run sets TRITON_INTERPRET=0).
"""
import json
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (CI), or beside any parent folder (a git worktree elsewhere).
SHARED_TOKENIZERS = next((p / "shared" / "data" / "tokenizers" for p in REPO.parents
                          if (p / "shared" / "data" / "tokenizers").is_dir()),
                         REPO.parent / "shared" / "data" / "tokenizers")


def _tokenizer(name: str) -> Path:
    path = SHARED_TOKENIZERS / name
    if not path.exists():
        pytest.skip(f"official tokenizer {name} not found at {path} (needs ../shared beside the repo)")
    return path


@pytest.fixture(scope="session")
def sp1024_path() -> Path:
    """Path of the official 1024-piece SentencePiece model (skips with a reason when absent)."""
    return _tokenizer("fineweb_1024_bpe.model")


@pytest.fixture(scope="session")
def sp8192_path() -> Path:
    """Path of the official 8192-piece SentencePiece model (skips with a reason when absent)."""
    return _tokenizer("fineweb_8192_bpe.model")


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch):
    """Fill every tensor made by ``torch.empty``/``empty_like`` with NaN (ints: -1 / max).

    A kernel that forgets to write an element then fails its comparison instead of passing
    on whatever the allocator happened to hold.
    """
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def fill(t):
        if t.is_floating_point() or t.is_complex():
            t.fill_(float("nan"))
        elif t.dtype == torch.bool:
            t.fill_(True)
        elif t.numel():
            t.fill_(-1 if t.is_signed() else torch.iinfo(t.dtype).max)
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(real_empty_like(*a, **k)))


@pytest.fixture
def reliability(record_property):
    """``reliability("CLEAR")`` / ``reliability("FINE")``: how a reliability case was answered (a
    clear one-line refusal, or correct behaviour); the session summary counts them."""
    def record(verdict: str) -> None:
        assert verdict in ("CLEAR", "FINE"), verdict
        record_property("reliability", verdict)
    return record


def pytest_terminal_summary(terminalreporter):
    """Print how many reliability cases passed as CLEAR / FINE (and how many failed), so the
    count can only go up."""
    counts = {"CLEAR": 0, "FINE": 0}
    for report in terminalreporter.stats.get("passed", []):
        for key, value in getattr(report, "user_properties", ()):
            if key == "reliability":
                counts[value] += 1
    failed = sum(1 for r in terminalreporter.stats.get("failed", []) if "test_reliability" in r.nodeid)
    if counts["CLEAR"] or counts["FINE"] or failed:
        terminalreporter.write_sep("-", f"reliability: {counts['CLEAR']} CLEAR, {counts['FINE']} FINE, "
                                        f"{failed} failing")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """An embedded build: 512-piece tokenizer, 30 validation documents (the reliability suite)."""
    from pgolf.data.build import build_embedded_dataset

    out = tmp_path_factory.mktemp("rel_data")
    build_embedded_dataset(out, vocab_size=512, num_val_docs=30, max_docs=300, progress=False)
    return out


@pytest.fixture(scope="session")
def other_data(tmp_path_factory) -> Path:
    """Another embedded build of the same documents with a 400-piece tokenizer."""
    from pgolf.data.build import build_embedded_dataset

    out = tmp_path_factory.mktemp("rel_other")
    build_embedded_dataset(out, vocab_size=400, num_val_docs=30, max_docs=300, progress=False)
    return out


@pytest.fixture(scope="session")
def trained(tiny_data, tmp_path_factory) -> tuple:
    """A finished tiny run (seq_len 32): its folder and submission.json."""
    from _reliability import train

    run_dir = tmp_path_factory.mktemp("rel_run")
    answer = train(tiny_data, run_dir)
    assert answer.rc == 0, answer.err
    return run_dir, json.loads((run_dir / "submission.json").read_text())
