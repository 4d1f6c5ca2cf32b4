"""Reports of a `memdyn run` work directory: a family overview and one report per model size.

  OUT/<family>/index.html, index.md      the family overview (memorized share against size, context
                                          and continuation; transitions; boundary effect; capacity;
                                          predictor results)
  OUT/<family>/<size>/report.html, .md   one model size in detail, with decoded samples
HTML is self-contained (figures as base64 PNG); Markdown links PNGs written beside it.

Modules: workdir (stages and their tables), findings (numbers and captions), figures (new
figures; the dynamics ones come from dynamics.decoding.plots), build (assembling documents), document
(the document model), html and markdown (rendering).
"""

from dynamics.report.build import write_reports

__all__ = ["write_reports"]
