import pytest

from tests.conftest import one_torch_thread


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    with one_torch_thread():
        yield
