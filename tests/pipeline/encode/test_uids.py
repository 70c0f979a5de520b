"""Stable UIDs: the same inputs give the same valid UID; different inputs never collide."""

from __future__ import annotations

import pydicom
import pytest

from pipeline.encode.common import DeviceInfo
from pipeline.encode.uids import device_observer_uid, stable_uid, tracking_uid


def test_tracking_uid_is_stable_valid_and_per_study_and_finding():
    a = tracking_uid("1.2.840.1.2.3")
    assert a == tracking_uid("1.2.840.1.2.3")
    assert pydicom.uid.UID(a).is_valid and a.startswith("2.25.") and len(a) <= 64
    assert a != tracking_uid("1.2.840.1.2.4") and a != tracking_uid("1.2.840.1.2.3", finding=2)


def test_observer_uid_per_installation():
    assert device_observer_uid("site-a") == DeviceInfo(installation_id="site-a").observer_uid
    assert DeviceInfo(installation_id="site-a").observer_uid != DeviceInfo(installation_id="site-b").observer_uid
    assert DeviceInfo().observer_uid == DeviceInfo().observer_uid          # stable even without an id
    assert stable_uid("tracking", "x") != stable_uid("device-observer", "x")
    with pytest.raises(ValueError):
        device_observer_uid("")
