"""The aiortc version check: the workarounds on aiortc internals refuse a release series they were not written for."""

from __future__ import annotations

import aiortc
import pytest

from emo_stream.errors import EmoStreamError
from server import aiortc_compat
from server.aiortc_compat import SUPPORTED_AIORTC, UnsupportedAiortcError, check_aiortc_version


def test_the_pinned_series_passes_whatever_its_patch_release():
    check_aiortc_version()  # the installed one: pyproject pins it
    check_aiortc_version(f"{SUPPORTED_AIORTC}.0")
    check_aiortc_version(f"{SUPPORTED_AIORTC}.7")


@pytest.mark.parametrize("version", ["1.15.0", "1.17.0", "2.16.0", "1.1", "1.160.0", "garbage"])
def test_another_series_is_refused_with_a_one_line_user_error(version):
    with pytest.raises(UnsupportedAiortcError) as info:
        check_aiortc_version(version)
    assert isinstance(info.value, EmoStreamError)  # the CLI prints it as one `error:` line, no traceback
    assert version in info.value.message and f"aiortc=={SUPPORTED_AIORTC}.*" in info.value.message
    assert "\n" not in info.value.message


def test_start_up_refuses_an_installed_aiortc_of_another_series_before_patching(monkeypatch):
    patched = []
    monkeypatch.setattr(aiortc_compat, "install_portrait_encoders", lambda: patched.append(True))
    monkeypatch.setattr(aiortc, "__version__", "1.17.0")
    with pytest.raises(UnsupportedAiortcError, match="aiortc 1.17.0 is installed"):
        aiortc_compat.install_aiortc_workarounds()
    assert not patched
    monkeypatch.setattr(aiortc, "__version__", f"{SUPPORTED_AIORTC}.3")
    aiortc_compat.install_aiortc_workarounds()
    assert patched == [True]
