"""pgolf submit: the bundle holds what the configuration uses, the generated train_gpt.py runs where
only the challenge's requirements are importable and prints pgolf's final lines and writes pgolf's
artifact byte for byte (a rans run builds the C++ codec from the source it carries), opens no file
outside its folder and the data, and bad input leaves nothing behind.

The clean interpreter runs torch with this process's thread count: CPU reductions (matmuls, sums)
split their work by thread, so another count gives weights that differ in the last bits (the
scores printed with 8 decimals usually still agree, the artifact bytes do not)."""
import ast
import base64
import importlib.metadata as md
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.requirements import Requirement

from _tiny import tiny_sets as shared_tiny_sets
from pgolf.artifact.format import load_artifact
from pgolf.cli import main as cli_main
from pgolf.config import ConfigError, load_config
from pgolf.data.shards import write_shard
from pgolf.pipeline import run_training
from pgolf.submit import folder
from pgolf.submit.folder import SubmitError, build_submission, make_script
from pgolf.submit.loader import SourceImporter
from pgolf.submit.native import NativeBuildError, build_codec, compiler
from pgolf.submit.runtime import resolve
from pgolf.submit.script import BundleError, plan_bundle
from pgolf.submit.wrapper import minify, minify_cpp, wrap

REPO = Path(__file__).resolve().parents[1]
# The challenge's requirements.txt entries a bundled script imports (the others: hub, datasets, ...).
CHALLENGE_REQUIREMENTS = ("torch", "numpy", "sentencepiece", "tqdm")
# The deterministic final lines: the artifact's size, the exact scores (headline and per mode), the gap.
FINAL_LINE = re.compile(r"^(Serialized model |final_\w+_exact |quant_gap )")


@pytest.fixture(scope="module")
def data(tmp_path_factory, sp1024_path) -> Path:
    """Official-format shards of CPython's pydoc topics, tokenized with the official 1024 tokenizer."""
    from pydoc_data.topics import topics

    import sentencepiece as spm

    out = tmp_path_factory.mktemp("data")
    sp = spm.SentencePieceProcessor(model_file=str(sp1024_path))
    docs = list(topics.values())

    def shard(texts):
        return np.concatenate([[sp.bos_id(), *sp.encode(t)] for t in texts]).astype(np.uint16)

    write_shard(out / "fineweb_train_000000.bin", shard(docs[:12]))
    write_shard(out / "fineweb_val_000000.bin", shard(docs[60:61]))
    (out / "tok.model").write_bytes(sp1024_path.read_bytes())
    return out


def tiny_sets(data: Path, run_dir: Path, **extra) -> list[str]:
    """The shared tiny run (:mod:`_tiny`) on the official-tokenizer shards (hand-written: no manifest)."""
    return shared_tiny_sets(data, run_dir, train_glob="fineweb_train_*.bin", val_glob="fineweb_val_*.bin",
                            tokenizer="tok.model", vocab_size=1024,
                            **{"train.val_batch_size": 4096, "quant.codec": "zlib", "data.verify_manifest": "false",
                               **extra})


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    """A finished tiny pgolf run (quant.codec=zlib)."""
    run_dir = tmp_path_factory.mktemp("run")
    run_training(load_config("demo", sets=tiny_sets(data, run_dir)), echo=False)
    return run_dir


def final_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if FINAL_LINE.match(line)]


def artifact_of(out: Path) -> Path:
    """The artifact the submission in ``out`` wrote (its run directory is ``runs/<name>_seed<seed>``)."""
    (path,) = (out / "runs").glob("*/model.pgolf")
    return path


def _distributions(names) -> set[str]:
    """``names`` and everything they require (no extras, markers evaluated here)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        for req in md.requires(name) or []:
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
    return seen


@pytest.fixture(scope="module")
def clean_site(tmp_path_factory) -> Path:
    """A site folder holding only the challenge's requirements a script imports (and what they
    require): links to those distributions' top-level packages in this interpreter's environment."""
    site = tmp_path_factory.mktemp("clean_site")
    for name in _distributions(CHALLENGE_REQUIREMENTS):
        dist = md.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or ()}
        for top in tops:
            src = Path(dist.locate_file(top))
            if top in ("..", "__pycache__", "bin") or top.endswith((".dist-info", ".pth")) or not src.exists():
                continue
            (site / top).symlink_to(src)
    return site


def run_isolated(script: Path, site: Path, *, cwd: Path, env: dict[str, str] | None = None,
                 audit_log: Path | None = None, run_name: str = "__main__") -> subprocess.CompletedProcess:
    """Run ``script`` as ``run_name`` with ``-I -S`` (no site-packages, no environment, no cwd on the
    path), only ``site`` added to the stdlib path and torch's thread count this process's (see the
    module docstring); ``audit_log`` records every opened file."""
    launcher = textwrap.dedent(f"""
        import json, os, runpy, sys
        sys.path.append({str(site)!r})
        if {audit_log is not None!r}:
            fd, seen = os.open({str(audit_log)!r}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), dict(opened=[], sockets=[])
            seen["path"] = list(sys.path)
            def hook(event, args):
                if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
                    seen["opened"].append([os.fsdecode(args[0]), args[2] if isinstance(args[2], int) else 0])
                elif event.startswith("socket."):
                    seen["sockets"].append(event)
            sys.addaudithook(hook)
            import atexit
            atexit.register(lambda: os.write(fd, json.dumps(seen).encode()))
        sys.argv = [{str(script)!r}]
        runpy.run_path({str(script)!r}, run_name={run_name!r})
    """)
    env = {"PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": str(torch.get_num_threads()), **(env or {})}
    return subprocess.run([sys.executable, "-I", "-S", "-c", launcher], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=900)


def test_the_clean_interpreter_reaches_only_the_challenge_requirements(clean_site, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent("""
        import importlib
        for name in ("torch", "numpy", "sentencepiece", "tqdm", "pgolf", "pgolf._codec", "triton_kernels",
                     "zstandard", "triton", "pytest", "python_minifier", "matplotlib"):
            try:
                importlib.import_module(name)
                print(name, "yes")
            except ImportError:
                print(name, "no")
    """))
    res = run_isolated(probe, clean_site, cwd=REPO)  # the repository as cwd: pgolf sits right there
    assert res.returncode == 0, res.stderr
    seen = dict(line.split() for line in res.stdout.splitlines())
    assert seen == {"torch": "yes", "numpy": "yes", "sentencepiece": "yes", "tqdm": "yes", "pgolf": "no",
                    "pgolf._codec": "no", "triton_kernels": "no", "zstandard": "no", "triton": "no", "pytest": "no",
                    "python_minifier": "no", "matplotlib": "no"}


@pytest.mark.slow  # trains and scores a tiny model in a fresh interpreter
def test_wrapped_script_in_a_clean_env_prints_pgolfs_final_lines(run, data, clean_site, tmp_path):
    out = tmp_path / "record"
    sub = build_submission(run, out, wrapper=True)
    script = out / "train_gpt.py"
    lines = script.read_text().splitlines()
    assert len(lines) == 2 and lines[0] == "import lzma,base64" and lines[1].startswith("exec(lzma.decompress(")
    assert sub.bytes_code == script.stat().st_size < sub.bytes_readable
    res = run_isolated(script, clean_site, cwd=out)
    assert res.returncode == 0, res.stderr[-3000:]
    expected = final_lines((run / "train.log").read_text())
    assert len(expected) == 4 and final_lines(res.stdout) == expected
    assert artifact_of(out).read_bytes() == (run / "model.pgolf").read_bytes()
    assert f"Code size: {sub.bytes_code} bytes" in res.stdout
    fields = json.loads((out / "submission.json").read_text())
    assert (fields["bytes_code"], fields["bytes_total"]) == (sub.bytes_code, sub.bytes_code + sub.bytes_model)
    assert fields["val_bpb"] == json.loads((run / "submission.json").read_text())["val_bpb"]


@pytest.mark.slow  # trains and scores a tiny model in a fresh interpreter
def test_script_opens_nothing_outside_its_folder_and_the_data(run, data, clean_site, tmp_path):
    out = tmp_path / "record"
    build_submission(run, out)
    log = tmp_path / "opened.json"
    res = run_isolated(out / "train_gpt.py", clean_site, cwd=out, env={"ITERATIONS": "2"}, audit_log=log)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "step:2/2 train_loss" in res.stdout  # the official environment names override the baked config
    seen = json.loads(log.read_text())
    assert not seen["sockets"]
    # Reading happens only in the script's folder, the data, and the interpreter's library path
    # (stdlib + the challenge's requirements); /proc, /sys and /dev are the kernel's. The one file
    # created elsewhere is torch's probe of the temp dir at import (tempfile.gettempdir: a new,
    # exclusive file, written and deleted, nothing read).
    fresh = os.O_CREAT | os.O_EXCL
    opened = [Path(os.path.realpath(p)) for p, flags in seen["opened"]
              if not (flags & fresh == fresh and Path(p).parent == Path(tempfile.gettempdir()))]
    libraries = [Path(os.path.realpath(p)) for p in (*seen["path"], *clean_site.iterdir())]
    allowed = [out.resolve(), data.resolve(), *libraries, Path("/proc"), Path("/sys"), Path("/dev")]
    outside = [p for p in opened if not any(p.is_relative_to(a) for a in allowed)]
    assert not outside
    assert not [p for p in opened if p.is_relative_to(REPO) and not p.is_relative_to(REPO / ".venv")]  # no pgolf source
    assert any(p.is_relative_to(data.resolve()) for p in opened) and any(p.is_relative_to(out.resolve()) for p in opened)


def test_readable_script_holds_the_modules_verbatim_and_only_what_the_config_uses(run, tmp_path):
    out = tmp_path / "record"
    build_submission(run, out)
    namespace: dict = {"__name__": "not_main", "__file__": str(out / "train_gpt.py")}
    exec(compile((out / "train_gpt.py").read_text(), "train_gpt.py", "exec"), namespace)
    sources = namespace["SOURCES"]
    for name, (is_package, source) in sources.items():
        if name != "pgolf.data.build":
            path = REPO.joinpath(*name.split("."), "__init__.py") if is_package else REPO.joinpath(*name.split(".")).with_suffix(".py")
            assert source == path.read_text(), name
    assert "Left out of this submission" in sources["pgolf.data.build"][1]
    assert {"pgolf.data.corpus", "pgolf.cli", "pgolf.submit.folder", "pgolf.submit.script",
            "triton_kernels.fake_quant.kernels", "triton_kernels.softcap_ce"}.isdisjoint(sources)
    assert namespace["CONFIG"]["train"]["iterations"] == 4 and namespace["CONFIG"]["data"]["embedded_default"] is False
    assert namespace["NATIVE"] == {}  # a zlib artifact needs no C++ codec


# Each optional feature: a setting that switches it on, and modules only it uses (a package
# stands for everything under it).
FEATURES = {
    "ttt": ({"eval.mode": "ttt", "eval.chunk": 16, "ttt.rank": 4}, {"pgolf.eval.ttt", "triton_kernels.lora", "triton_kernels.lora.ops"}),
    "cache": ({"eval.mode": "flat+cache"}, {"pgolf.eval.cache", "triton_kernels.neural_cache",
                                            "triton_kernels.neural_cache.ops"}),
    "ttt+cache": ({"eval.mode": "flat,ttt+cache", "eval.chunk": 16, "ttt.rank": 4}, {"pgolf.eval.ttt", "pgolf.eval.cache", "triton_kernels.lora"}),
    "gptq": ({"quant.method": "gptq"}, {"pgolf.quant.gptq", "pgolf.quant.calibrate"}),
    "lqer": ({"quant.lqer_top_k": 2}, {"pgolf.quant.lqer"}),
    "official_int8": ({"quant.scheme": "official_int8"}, {"pgolf.quant.official_int8", "pgolf.artifact.official_int8"}),
    "official_sum": ({"train.val_sum": "official"}, {"pgolf.eval.official"}),
    "fused_loss": ({"model.loss_impl": "fused"}, {"triton_kernels.softcap_ce", "triton_kernels.softcap_ce.ops"}),
    "rans": ({"quant.codec": "rans"}, {"pgolf.submit.native"}),
}


@pytest.mark.parametrize("feature", list(FEATURES))
def test_an_optional_feature_is_bundled_only_when_the_config_uses_it(data, tmp_path, feature):
    """Left out of the demo's bundle entirely (no stub: nothing bundled imports it at its top level),
    bundled verbatim when its setting is on."""
    sets, modules = FEATURES[feature]
    demo = plan_bundle(load_config("demo", sets=tiny_sets(data, tmp_path)))
    assert modules.isdisjoint(demo.sources) and modules <= set(demo.left_out)
    used = plan_bundle(load_config("demo", sets=tiny_sets(data, tmp_path, **sets)))
    assert modules <= set(used.sources) and not modules & set(used.left_out)
    for name in modules:
        assert "Left out of this submission" not in used.sources[name][1], name


def test_a_rans_bundle_carries_the_codec_source_and_not_the_reporting_tools(data, tmp_path):
    bundle = plan_bundle(load_config("demo", sets=tiny_sets(data, tmp_path, **{"quant.codec": "rans"})))
    csrc = sorted(p.name for p in (REPO / "csrc").iterdir() if p.suffix in (".cpp", ".h"))
    assert sorted(bundle.native) == csrc and bundle.native["rans.cpp"] == (REPO / "csrc" / "rans.cpp").read_text()
    assert "pgolf.artifact.format" in bundle.sources and "pgolf.artifact.index" not in bundle.sources


def test_a_triton_kernel_is_left_out_only_when_its_own_setting_is_torch(data, tmp_path):
    """train.kernels='torch' drops the Newton-Schulz and fake-quant kernels, not the LoRA kernels a
    TTT mode runs with ttt.impl='auto', nor the cache's (which have no setting)."""
    sets = {"train.kernels": "torch", "eval.mode": "ttt+cache", "eval.chunk": 16, "ttt.rank": 4}
    bundle = plan_bundle(load_config("demo", sets=tiny_sets(data, tmp_path, **sets)))
    assert {"triton_kernels.lora.kernels", "triton_kernels.neural_cache.kernels"} <= set(bundle.sources)
    assert "train.kernels='torch'" in bundle.left_out["triton_kernels._newton_schulz_kernels"]
    bundle = plan_bundle(load_config("demo", sets=tiny_sets(data, tmp_path, **sets, **{"ttt.impl": "torch"})))
    assert "ttt.impl='torch'" in bundle.left_out["triton_kernels.lora.kernels"]
    assert "triton_kernels.neural_cache.kernels" in bundle.sources


def test_without_a_compiler_the_codec_build_says_so(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(NativeBuildError, match="no C\\+\\+ compiler was found.*set CXX.*quant.codec=zlib"):
        compiler({"CXX": "g++"})


def test_cxx_names_the_compiler(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}" if name == "my-c++" else None)
    assert compiler({"CXX": "my-c++ -m64"}) == ["my-c++", "-m64"]


def test_a_failing_codec_build_names_the_file_and_leaves_nothing_behind(tmp_path):
    if not shutil.which("c++") and not shutil.which("g++"):
        pytest.skip("no C++ compiler here")
    with pytest.raises(NativeBuildError, match="compiling broken.cpp failed .*broken.cpp"):
        build_codec({"broken.cpp": "this is not C++;\n"}, tmp_path / "codec")
    assert [p.name for p in (tmp_path / "codec").iterdir()] == [".lock"]


def test_bundle_follows_lazy_imports_and_the_kernels_setting(data, tmp_path):
    auto = plan_bundle(load_config("demo", sets=tiny_sets(data, tmp_path, **{"train.kernels": "auto"}))).sources
    torch_only = plan_bundle(load_config("demo", sets=tiny_sets(data, tmp_path))).sources
    kernels = {"triton_kernels.fake_quant.kernels", "triton_kernels._newton_schulz_kernels"}
    assert kernels <= set(auto)  # imported inside functions only, on the Triton path
    assert kernels.isdisjoint(torch_only) and set(torch_only) < set(auto)
    assert {"pgolf.submit.runtime", "pgolf.pipeline", "pgolf.model.gpt", "pgolf.optim.muon", "pgolf.quant.rtn",
            "pgolf.artifact.format", "pgolf.eval.flat"} <= set(torch_only)


def test_a_codec_the_challenge_cannot_decode_is_refused(data, tmp_path):
    with pytest.raises(BundleError, match="quant.codec='zstd' needs zstandard.*--set quant.codec=zlib or rans"):
        plan_bundle(load_config("demo", sets=tiny_sets(data, tmp_path, **{"quant.codec": "zstd"})))


@pytest.fixture(scope="module")
def rans_run(data, tmp_path_factory) -> Path:
    """A finished tiny pgolf run whose artifact is entropy coded by pgolf's C++ codec (quant.codec
    = rans; every matrix quantised, int6 with an int8 embedding)."""
    run_dir = tmp_path_factory.mktemp("rans_run")
    sets = tiny_sets(data, run_dir, **{"quant.codec": "rans", "quant.keep_float_max_numel": 0, "quant.bits": 6,
                                       "quant.policy": "tok_emb=8"})
    run_training(load_config("demo", sets=sets), echo=False)
    return run_dir


DECODE_PROBE = """
import os, runpy, torch
namespace = runpy.run_path("train_gpt.py", run_name="submission")  # defines, runs nothing
namespace["install"](namespace["SOURCES"], namespace["ROOTS"], os.path.abspath("train_gpt.py"))
from pgolf.submit.native import build_codec
assert build_codec(namespace["NATIVE"], "build/codec") == 0.0  # the script's own build, reused
from pgolf.artifact.format import load_artifact
art = load_artifact(os.environ["ARTIFACT"])
torch.save({n: (t.codes, t.scale) if hasattr(t, "codes") else t for n, t in art.tensors.items()}, "decoded.pt")
"""


@pytest.mark.slow  # compiles the C++ codec (~90 s on the shared 2-core machine) and trains a tiny model
def test_a_rans_submission_builds_its_codec_and_writes_and_decodes_pgolfs_artifact(rans_run, clean_site, tmp_path):
    pgolf_artifact = rans_run / "model.pgolf"
    data = pgolf_artifact.read_bytes()
    method, blob = data[16], data[17:16 + struct.unpack_from("<I", data, 12)[0]]
    assert method in (0, 2, 3)  # raw, xz or raw LZMA2: no zstd, which the challenge's environment lacks
    raw_lzma2 = [{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 22}]
    index = json.loads({0: lambda b: b, 2: lzma.decompress,
                        3: lambda b: lzma.decompress(b, format=lzma.FORMAT_RAW, filters=raw_lzma2)}[method](blob))
    codes = {e["codes"]["codec"] for e in index["tensors"] if e["kind"] == "q"}
    assert len(index["tensors"]) > 10 and codes and codes <= {"rans", "joint", "ctx"}  # all entropy coded
    out = tmp_path / "record"
    sub = build_submission(rans_run, out, wrapper=True)
    res = run_isolated(out / "train_gpt.py", clean_site, cwd=out)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "native codec: compiled pgolf._codec from the embedded C++ source" in res.stdout
    expected = final_lines((rans_run / "train.log").read_text())
    assert len(expected) == 4 and expected[0].startswith("Serialized model rans:")
    assert final_lines(res.stdout) == expected
    assert artifact_of(out).read_bytes() == pgolf_artifact.read_bytes()
    assert f"Code size: {sub.bytes_code} bytes" in res.stdout
    # The script's reader, with the codec it built, decodes pgolf's artifact exactly as pgolf does.
    (out / "decode.py").write_text(DECODE_PROBE)
    res = run_isolated(out / "decode.py", clean_site, cwd=out, env={"ARTIFACT": str(pgolf_artifact)})
    assert res.returncode == 0, res.stderr[-3000:]
    decoded = torch.load(out / "decoded.pt")
    want = load_artifact(pgolf_artifact).tensors
    assert list(decoded) == list(want)
    for name, t in want.items():
        got = decoded[name]
        if hasattr(t, "codes"):
            assert torch.equal(got[0], t.codes) and torch.equal(got[1], t.scale), name
        else:
            assert torch.equal(got, t), name


def test_the_importer_serves_its_sources_and_refuses_the_rest(tmp_path):
    importer = SourceImporter({"pkgx": (True, ""), "pkgx.mod": (False, "def f():\n    return 41 + 1\n")},
                              ("pkgx",), str(tmp_path / "train_gpt.py"))
    sys.meta_path.insert(0, importer)
    try:
        import inspect

        import pkgx.mod
        assert pkgx.mod.f() == 42 and "return 41 + 1" in inspect.getsource(pkgx.mod.f)
        with pytest.raises(ModuleNotFoundError, match="pkgx.other is not part of this submission"):
            import pkgx.other
    finally:
        sys.meta_path.remove(importer)
        for name in ("pkgx", "pkgx.mod"):
            sys.modules.pop(name, None)


def test_runtime_config_takes_the_official_names_and_names_a_missing_tokenizer(data, tmp_path):
    cfg = load_config("demo", sets=tiny_sets(data, tmp_path)).to_dict()
    script = tmp_path / "rec" / "train_gpt.py"
    got = resolve(cfg, script, {"ITERATIONS": "3", "SEED": "7", "DATA_PATH": str(data)})
    assert (got.train.iterations, got.train.seed, got.data.val_glob) == (3, 7, f"{data}/fineweb_val_*.bin")
    assert got.train.run_dir == str(script.resolve().parent / "runs" / "demo_seed7")
    with pytest.raises(ConfigError, match="tokenizer .*nope.model does not exist; set TOKENIZER_PATH"):
        resolve(cfg, script, {"TOKENIZER_PATH": str(tmp_path / "nope.model")})


@pytest.mark.parametrize("codec", ["zlib", "raw"])
def test_a_portable_artifact_reads_without_zstandard(tmp_path, monkeypatch, codec):
    from pgolf.artifact.format import load_artifact, save_artifact

    # An index that zstd-22 compresses best: it would be chosen if zstd were a candidate.
    config = {"note": "ab" * 300 + "".join(chr(97 + i % 26) * (i % 7) for i in range(400))}
    tensors = {"w": torch.arange(64, dtype=torch.float32)}
    save_artifact(tmp_path / "a.pgolf", config=config, tensors=tensors, codec=codec)
    assert (tmp_path / "a.pgolf").read_bytes()[16] in (0, 2, 3)  # raw, xz or raw LZMA2 index
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard now fails
    assert torch.equal(load_artifact(tmp_path / "a.pgolf").tensors["w"], tensors["w"])


def test_wrapper_is_two_lines_that_run_the_minified_source():
    source = '"""doc"""\ndef twice(value):\n    """doc"""\n    return 2 * value\nRESULT = twice(21)\n'
    small = minify(source)
    assert "doc" not in small and ast.parse(small)
    namespace: dict = {}
    exec(wrap(small), namespace)
    assert namespace["RESULT"] == 42 and wrap(small).count("\n") == 2


def test_carried_cpp_loses_comments_and_layout_but_not_literals_or_directives():
    source = ('// header comment\n#include <cstdio>  // why\n\n/* block\n   comment */\nint main() {\n'
              '    const char* s = "a // b /* c */";  /* inline */ char c = \'/\';\n'
              '    return s[0] == c;  // done\n}\n')
    assert minify_cpp(source) == ('#include <cstdio>\nint main() {\nconst char* s = "a // b /* c */";    char c = \'/\';\n'
                                  'return s[0] == c;\n}\n')


def test_a_wrapped_rans_bundle_carries_its_cpp_minified(data, tmp_path):
    cfg = load_config("demo", sets=tiny_sets(data, tmp_path, **{"quant.codec": "rans"}))
    shipped, _ = make_script(cfg, wrapper=True)
    inner = ast.parse(lzma.decompress(base64.b85decode(shipped.split('"')[1])).decode())
    (native,) = [ast.literal_eval(n.value) for n in inner.body
                 if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "NATIVE"]
    carried = plan_bundle(cfg).native  # the readable script's: the files verbatim
    assert set(native) == set(carried) and all(native[n] == minify_cpp(carried[n]) for n in carried)
    assert sum(map(len, native.values())) < 0.8 * sum(map(len, carried.values()))


def test_bad_input_is_refused_and_leaves_nothing_behind(run, data, tmp_path, capsys, monkeypatch):
    def leftovers():
        return sorted(p.name for p in tmp_path.iterdir() if p.name != "unfinished")

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("config.json", "train.log", "submission.json"):
        (unfinished / name).write_bytes((run / name).read_bytes())
    with pytest.raises(SubmitError, match="lacks model.pgolf: the run has not finished"):
        build_submission(unfinished, tmp_path / "a")
    with pytest.raises(SubmitError, match="tokenizer .*missing.model does not exist.*--tokenizer"):
        build_submission(run, tmp_path / "a", tokenizer=str(tmp_path / "missing.model"))
    monkeypatch.setattr(folder, "SIZE_CAP_BYTES", 1000)
    with pytest.raises(SubmitError, match=r"code [\d,]+ bytes \+ model [\d,]+ bytes = [\d,]+ > 1,000"):
        build_submission(run, tmp_path / "a")
    monkeypatch.undo()
    assert leftovers() == []

    out = tmp_path / "rec"
    out.mkdir()
    assert cli_main(["submit", str(run), "--out", str(out)]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err and not any(out.iterdir())
    assert cli_main(["submit", str(run), "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "submission.json", "train.log", "train_gpt.py"]
    assert leftovers() == ["rec"]
    readme = (out / "README.md").read_text()
    assert f"{json.loads((out / 'submission.json').read_text())['bytes_code']:,}" in readme


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): what a refusal must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_never_deletes_the_run_nor_other_work(run, data, tmp_path):
    """--out equal to the run directory, above it (directly or through a symbolic link), holding the
    tokenizer or files submit did not write, or not a folder: refused, and nothing is touched."""
    par = tmp_path / "par"
    shutil.copytree(run, par / "r")
    (par / "important.txt").write_text("keep me")
    (tmp_path / "link").symlink_to(par, target_is_directory=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "important.txt").write_text("keep me too")
    (other / "train_gpt.py").write_text("")
    (tmp_path / "tok").mkdir()
    shutil.copyfile(data / "tok.model", tmp_path / "tok" / "tok.model")
    before = snapshot(tmp_path)
    for run_dir, out, error in [(par / "r", par / "r", "is or holds the run directory"),
                                (par / "r", par, "is or holds the run directory"),
                                (tmp_path / "link" / "r", par, "is or holds the run directory"),
                                (par / "r", tmp_path / "link", "exists and is not a folder"),
                                (par / "r", par / "important.txt", "exists and is not a folder"),
                                (par / "r", other, "holds important.txt, which pgolf submit did not write")]:
        with pytest.raises(SubmitError, match=error):
            build_submission(run_dir, out, overwrite=True)
    with pytest.raises(SubmitError, match="is or holds the tokenizer"):
        build_submission(par / "r", tmp_path / "tok", overwrite=True, tokenizer=str(tmp_path / "tok" / "tok.model"))
    assert snapshot(tmp_path) == before
    build_submission(par / "r", tmp_path / "rec")
    build_submission(par / "r", tmp_path / "rec", overwrite=True)  # a records folder submit wrote is replaced
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == sorted(folder.RECORD_FILES)


@pytest.fixture(scope="module")
def official_run(data, tmp_path_factory) -> Path:
    """A finished tiny run exported with quant.scheme=official_int8 (final_model.int8.ptz)."""
    run_dir = tmp_path_factory.mktemp("official_run")
    run_training(load_config("demo", sets=tiny_sets(data, run_dir, **{"quant.scheme": "official_int8"})), echo=False)
    return run_dir


def test_the_submitted_model_is_the_artifact_of_the_runs_scheme_and_size(run, official_run, tmp_path):
    """An official_int8 run is submitted with its final_model.int8.ptz, not a stale model.pgolf of an
    earlier pgolf-scheme run beside it; an artifact whose size is not the scored one is refused."""
    stale = tmp_path / "stale"
    shutil.copytree(official_run, stale)
    shutil.copyfile(run / "model.pgolf", stale / "model.pgolf")
    ptz = (official_run / "final_model.int8.ptz").stat().st_size
    assert ptz == json.loads((official_run / "submission.json").read_text())["bytes_model"]
    for run_dir in (official_run, stale):
        sub = build_submission(run_dir, tmp_path / f"rec_{run_dir.name}")
        assert sub.bytes_model == ptz
        assert json.loads((sub.out / "submission.json").read_text())["bytes_model"] == ptz
        assert "int8 + zlib (`final_model.int8.ptz`)" in (sub.out / "README.md").read_text()
    changed = tmp_path / "changed"
    shutil.copytree(run, changed)
    with open(changed / "model.pgolf", "ab") as f:
        f.write(b"\0")
    with pytest.raises(SubmitError, match=r"model.pgolf is [\d,]+ bytes but submission.json scored [\d,]+"):
        build_submission(changed, tmp_path / "rec_changed")


def edited_run(run: Path, dest: Path, *, config: dict | None = None, report: dict | None = None,
               checkpoint_step: int | None = None) -> Path:
    """A copy of ``run`` at ``dest`` with ``config`` ({section: {key: value}}) and ``report`` merged into
    config.json and submission.json, and its checkpoint moved to ``checkpoint_step``."""
    shutil.copytree(run, dest)
    cfg = json.loads((dest / "config.json").read_text())
    for section, values in (config or {}).items():
        cfg[section].update(values)
    (dest / "config.json").write_text(json.dumps(cfg))
    (dest / "submission.json").write_text(json.dumps({**json.loads((dest / "submission.json").read_text()),
                                                      **(report or {})}))
    if checkpoint_step is not None:
        ck = torch.load(dest / "checkpoint.pt", weights_only=False)
        torch.save({**ck, "step": checkpoint_step}, dest / "checkpoint.pt")
    return dest


def test_run_files_that_disagree_are_refused(run, tmp_path):
    """The 4-step run resumed with iterations=2 (config rewritten after the export), an interrupted
    resume towards 3000 iterations (checkpoint past the scored step; or no checkpoint), a damaged
    checkpoint: each refused naming the disagreement. A wall-clock-capped run short of its
    iterations is finished."""
    cases = [
        ({"config": {"train": {"iterations": 2}}},
         ("scored step 4 but config.json asks for train.iterations=2: config.json was rewritten after the export; "
          "restore it with pgolf train --resume --set train.iterations=4")),
        ({"config": {"train": {"iterations": 3000}}, "checkpoint_step": 121},
         ("checkpoint.pt is at step 121 but submission.json scored the model at step 4: the run was resumed and has "
          "not finished; finish it with pgolf train --resume")),
        ({"config": {"train": {"iterations": 3000}}},  # and no checkpoint (removed below)
         "asks for train.iterations=3000 .* but submission.json scored step 4: the run has not finished"),
        ({"config": {"train": {"iterations": 3000}}, "report": {"stop_reason": "wallclock_cap"}},
         "the run has not finished"),  # stopped by a cap that config.json does not have
        ({"report": {"stop_reason": "crashed"}}, "stop_reason 'crashed', which pgolf train never writes"),
    ]
    for i, (edits, error) in enumerate(cases):
        dest = edited_run(run, tmp_path / f"run{i}", **edits)
        if i == 2:
            (dest / "checkpoint.pt").unlink()
        with pytest.raises(SubmitError, match=error):
            build_submission(dest, tmp_path / f"rec{i}")
    damaged = edited_run(run, tmp_path / "damaged")
    (damaged / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SubmitError, match="checkpoint .*checkpoint.pt is damaged .*retrain"):
        build_submission(damaged, tmp_path / "rec_damaged")
    assert not list(tmp_path.glob("rec*"))
    capped = edited_run(run, tmp_path / "capped", config={"train": {"iterations": 3000, "max_wallclock_seconds": 600}},
                        report={"stop_reason": "wallclock_cap"})
    assert build_submission(capped, tmp_path / "rec_capped").out.is_dir()


def test_the_tokenizer_must_be_a_sentencepiece_model_of_the_runs_vocabulary(run, sp8192_path, tmp_path):
    text = tmp_path / "tok.model"
    text.write_text("not a tokenizer\n")
    with pytest.raises(SubmitError, match="tokenizer .*tok.model is not a SentencePiece model"):
        build_submission(run, tmp_path / "a", tokenizer=str(text))
    with pytest.raises(SubmitError, match="has 8192 pieces but vocab_size 1024 .*--tokenizer"):
        build_submission(run, tmp_path / "a", tokenizer=str(sp8192_path))
    assert not (tmp_path / "a").exists()


def test_a_run_directory_that_is_a_file_is_named_so(tmp_path, capsys):
    (tmp_path / "t.sh").write_text("echo\n")
    assert cli_main(["submit", str(tmp_path / "t.sh"), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "t.sh is not a directory" in err and err.count("\n") == 1 and not (tmp_path / "x").exists()


def test_minified_triton_kernels_still_compile_from_the_importers_sources(tmp_path):
    """Triton compiles a kernel from its source (inspect.getsource): served from memory and
    minified, Newton-Schulz still equals the torch reference (under TRITON_INTERPRET=1 here)."""
    names = ["triton_kernels", "triton_kernels._dispatch", "triton_kernels.newton_schulz",
             "triton_kernels._newton_schulz_kernels"]
    sources = {n.replace("triton_kernels", "tk_min"): (n == "triton_kernels", minify(
        (REPO / "triton_kernels" / "__init__.py" if n == "triton_kernels" else
         REPO.joinpath(*n.split(".")).with_suffix(".py")).read_text())) for n in names}
    importer = SourceImporter(sources, ("tk_min",), str(tmp_path / "train_gpt.py"))
    sys.meta_path.insert(0, importer)
    try:
        from tk_min.newton_schulz import newton_schulz

        x = torch.randn(2, 16, 24, generator=torch.Generator().manual_seed(0))
        got = newton_schulz(x, steps=2, impl="triton")
        want = newton_schulz(x, steps=2, impl="torch")
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    finally:
        sys.meta_path.remove(importer)
        for name in list(sys.modules):
            if name.split(".")[0] == "tk_min":
                del sys.modules[name]
