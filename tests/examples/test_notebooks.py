"""The example notebooks: stored exactly as examples/_build_notebooks.py writes them (no outputs), and each one
executed top to bottom in a real Jupyter kernel with small settings; every picture it promises is checked."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.examples.pngcheck import assert_picture_shows_something

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CELL_TIMEOUT_S = 240  # one cell; the whole small notebook takes well under that

# notebook -> (pictures it must write, modules it needs beyond the MPQ engine)
EXPECTED = {
    "01_search_a_proxy": (("01_search_history.png", "01_searched_proxy.png", "01_known_proxies.png"), ()),
    "02_your_own_network": (("02_pareto.png", "02_searched_proxy.png"), ()),
    "03_model_retrieval": (("03_rank_chart_same_task.png", "03_rank_chart_new_task.png"),
                           ("proxylab.retrieval.zoo", "proxylab.retrieval.encoders", "proxylab.retrieval.index")),
    "04_query_service": (("04_query_results.png", "04_query_filtered.png"), ("proxylab.service.client", "proxylab.retrieval.index")),
}


def _generator():
    spec = importlib.util.spec_from_file_location("_build_notebooks", EXAMPLES / "_build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_notebook_is_generated_and_stored_without_outputs():
    gen = _generator()
    assert sorted(gen.NOTEBOOKS) == sorted(EXPECTED)
    for name in gen.NOTEBOOKS:
        path = EXAMPLES / f"{name}.ipynb"
        assert path.is_file(), f"{path} missing: run python examples/_build_notebooks.py"
        assert path.read_text() == gen.render(name), f"{path} is stale: run python examples/_build_notebooks.py"
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
        assert "PROXYLAB_NOTEBOOK_SMALL" in "".join(code[0]["source"])  # the settings cell comes first


def _skip_unless_shipped_retrieval_weights(name: str) -> None:
    """The retrieval notebooks need the shipped feature extractor and encoders (package data, built once)."""
    from proxylab.errors import ProxylabError
    from proxylab.retrieval.encoders import Encoders

    try:
        Encoders.default()
    except (ProxylabError, FileNotFoundError) as e:
        pytest.skip(f"{name} needs the shipped retrieval weights (proxylab/retrieval/shipped): {e}")


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A kernelspec for this very interpreter (the .venv), so the notebooks import the proxylab under test
    whatever kernels the machine has registered; and a statistics cache of their own."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / "proxylab-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        # -X faulthandler: a kernel killed with SIGABRT while stuck prints where it was
        "argv": [sys.executable, "-X", "faulthandler", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "proxylab tests", "language": "python"}))
    return {"JUPYTER_PATH": str(root), "PROXYLAB_CACHE": str(root / "cache"), "PROXYLAB_NOTEBOOK_SMALL": "1"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_and_draws(name, tmp_path, monkeypatch, kernel_env):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pictures, needs = EXPECTED[name]
    for module in needs:  # the retrieval / service notebooks wait for those engines
        pytest.importorskip(module, reason=f"{name} needs {module}, which is not built yet")
    if needs:
        _skip_unless_shipped_retrieval_weights(name)
    for key, value in kernel_env.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("PROXYLAB_NOTEBOOK_OUT", str(out))

    nb = nbformat.read(EXAMPLES / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="proxylab-test",
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{name} failed:\n{str(e)[-3000:]}")
    finally:
        nbformat.write(nb, out / f"{name}.executed.ipynb")  # kept beside the pictures for a look after a failure
    for picture in pictures:
        assert_picture_shows_something(out / picture)
    shown = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(shown) >= len(pictures)  # displayed inline too, not only written
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "Highs" not in text  # the ILP solver's native debug lines stay out of a reader's notebook
