"""One text-enabled build per session (MiniLM exported once, about 5 s on 2 cores), shared by the
encoder, projection and text-search tests of this folder."""

import pytest

from exporter.build import build
from tests.integration.conftest import TEXT_DATA, TEXT_TRAIN


@pytest.fixture(scope="session")
def text_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("text-build")
    return build(out, synthetic=True, synthetic_kwargs=TEXT_DATA, config=TEXT_TRAIN,
                 progress=False, tensorrt=False, text_encoder=True)


@pytest.fixture(scope="session")
def torch_encoder():
    from exporter.text_encoder import load_torch_encoder

    return load_torch_encoder()
