"""The session's text-enabled build (MiniLM exported once, about 5 s on 2 cores; the same build
tests/integration serves), shared by the encoder, projection and text-search tests of this folder."""

import pytest

from tests.fixtures.builds import TEXT


@pytest.fixture(scope="session")
def text_build(builds):
    return builds.get(TEXT)


@pytest.fixture(scope="session")
def torch_encoder():
    from exporter.text_encoder import load_torch_encoder

    return load_torch_encoder()
