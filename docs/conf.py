"""Sphinx configuration of the dp_pixel_torch documentation.

Build (warnings are errors, as in ``tests/test_docs.py``)::

    pip install -e ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package and docs/examples are importable from a checkout
os.environ.setdefault("OMP_NUM_THREADS", "1")  # executed examples are small; leave the cores to others

import dp_pixel_torch  # noqa: E402

project = "dp_pixel_torch"
author = "dp_pixel_torch contributors"
copyright = "dp_pixel_torch contributors"
release = dp_pixel_torch.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "examples/GALLERY_HEADER.rst", "examples/*.py", "scripts"]
templates_path = ["_templates"]

# --- Markdown (MyST) ---------------------------------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3  # [text](page.md#a-heading) links are checked: a missing anchor is a warning, so an error
suppress_warnings: list[str] = []

# --- API reference -----------------------------------------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": False}
napoleon_google_docstring = True  # the docstrings use Google-style "Args:" and "Attributes:" sections
napoleon_numpy_docstring = False
napoleon_use_ivar = True

# Cross-references: every :func:/:class:/:meth: role in a docstring that names something of this package must
# resolve (nitpicky). Names outside the package (torch, numpy, the standard library, ray) are not documented here and
# no inventory is fetched (the build runs offline), so they are ignored by pattern.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|torchvision|numpy|np|ray|cv2|PIL|scipy|collections|typing|pathlib|os|io|concurrent)(\..*)?"),
    (r"py:.*", r"(Tensor|Generator|Module|Dataset|DataLoader|Path|Callable|Iterable|Iterator|Sequence|Mapping|Any|"
               r"Optional|Union|Literal|Self|BinaryIO|ndarray|dtype|device|Transform|v2\..*|nn\..*|F\..*)"),
    (r"py:.*", r".*\._[A-Za-z].*|_[A-Za-z].*"),
    # internal modules whose helpers are not part of the documented API (they render as code, without a link)
    (r"py:.*", r"(dp_pixel_torch\.)?(noise|partitions|mechanisms|storage|accounting|training_data)(\..*)?"),  # private helpers (a base class, a type alias)
    (r"py:.*", r"(int|float|str|bytes|bool|dict|list|tuple|object|None|type|slice|Ellipsis|os\.PathLike|"
               r"ValueError|TypeError|RuntimeError|Exception|OSError|KeyError|IndexError)"),
]

# --- Executed examples (sphinx-gallery) --------------------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": ["examples"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"/plot_",  # every plot_*.py runs at build time
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "show_memory": False,
    "image_scrapers": ("matplotlib",),
    "matplotlib_animations": False,
    "abort_on_example_error": True,
}

# --- HTML --------------------------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"dp_pixel_torch {release}"
html_static_path = ["_static"]


# --- Docstring conventions -----------------------------------------------------------------------------------------------
# The package's docstrings use Google-style sections ("Args:", "Attributes:", "Returns:"), which napoleon renders.
# Napoleon also reads the first line of an attribute or property docstring as "type: description"; this package's
# one-line attribute docstrings are sentences that may contain a colon ("Calls drawn so far: ..."), so they are kept
# as written.
from sphinx.ext.napoleon import docstring as _napoleon_docstring  # noqa: E402


def _attribute_docstring_as_written(self):
    return self._consume_to_end()


_napoleon_docstring.GoogleDocstring._parse_attribute_docstring = _attribute_docstring_as_written


# Objects in ``dp_pixel_torch.__all__`` are documented once, under their public name (``dp_pixel_torch.KeyStream``);
# docstrings that name them by their defining module (``dp_pixel_torch.noise.KeyStream``) link to that page.
_PUBLIC = set(dp_pixel_torch.__all__)


def _resolve_public_alias(app, env, node, contnode):
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py":
        return None
    parts = target.split(".")
    for i, part in enumerate(parts[1:], start=1):
        if target.startswith("dp_pixel_torch.") and part in _PUBLIC and i > 1:
            public = ".".join(["dp_pixel_torch", *parts[i:]])
            domain = env.get_domain("py")
            return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], public, node, contnode)
    # A short name in a docstring (``:func:`dilate_boxes```, ``:meth:`KeyStream.words```) written for the defining
    # module's namespace: link it when exactly one documented object of the package ends with it.
    domain = env.get_domain("py")
    short = target.lstrip("~.")
    matches = [name for name in domain.objects if name.startswith("dp_pixel_torch.") and name.endswith("." + short)]
    if len(matches) == 1:
        return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], matches[0], node, contnode)
    return None


def setup(app):
    app.connect("missing-reference", _resolve_public_alias)
