"""The exporter: data -> trained base model -> a complete Triton model repository.

A build's output folder (`freshrec build --out DIR`) holds the repository and, for a synthetic
build, the data it trained on. The names are here, importable without torch, so that
`freshrec serve` can accept the output folder as well as the repository inside it.
"""

from model_repository.retrieve_schema import TOWER_POOLED

REPOSITORY_DIR = "repository"  # DIR/repository: what tritonserver serves
DATA_DIR = "data"              # DIR/data: the generated ratings and items (synthetic builds)
# `freshrec build`'s time for choosing its settings on a validation slice (exporter.search):
# the bound, at most 5 minutes on 2 cores for 500k events
DEFAULT_SEARCH_BUDGET_S = 300.0
# the user tower a build trains unless told (`freshrec build --tower`): pooled, because only it
# takes the closed form, which won the protocol `build` prints on ml-100k and the synthetic set
# (the trained sequence tower edged it on MovieTweetings): docs/results/towers-text.md
DEFAULT_TOWER = TOWER_POOLED
