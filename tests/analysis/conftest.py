import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_blas_thread():
    """Small SVDs: one BLAS thread is much faster than two fighting over a busy 2-core machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1):
        yield
