"""A real Orthanc (Debian package `orthanc`) as the hospital's PACS in tests.

Each instance runs on its own loopback ports and folder, and can be stopped and
started again on the same ports and storage (an outage). The REST helpers are the
few calls the tests need: upload, send a study to a DICOM modality, and list what a
study holds.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.helpers import dcmtk_env, free_port, require_tool

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


@dataclass
class Orthanc:
    """One Orthanc process: `start()`, `stop()`, and REST calls on `url`."""

    workdir: Path
    modalities: dict[str, list[Any]] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)
    dicomweb: bool = False
    lua: str | None = None
    aet: str = "ORTHANC"
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def _write_config(self) -> Path:
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "Name": "radnode-test-pacs",
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "DicomCheckCalledAet": True,
            "DicomModalities": self.modalities,
            "DicomScuTimeout": 30,
            "Plugins": [require_tool(DICOMWEB_PLUGIN)] if self.dicomweb else [],
            "DicomWeb": {"Enable": self.dicomweb, "Root": "/dicom-web/"},
        }
        if self.lua is not None:
            script = self.workdir / "filter.lua"
            script.write_text(self.lua)
            config["LuaScripts"] = [str(script)]
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=1))
        return path

    def start(self, timeout: float = 30.0) -> Orthanc:
        config = self._write_config()
        log = (self.workdir / "orthanc.log").open("ab")
        self.proc = subprocess.Popen(
            [require_tool(ORTHANC), "--verbose", str(config)],
            env=dcmtk_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited early:\n{self.log_text()[-3000:]}")
            try:
                if self.get("/system").get("DicomAet") == self.aet:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"Orthanc did not start in {timeout} s:\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def log_text(self) -> str:
        path = self.workdir / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- REST ------------------------------------------------------------------------

    def _auth(self) -> tuple[str, str] | None:
        return next(iter(self.users.items())) if self.users else None

    def get(self, path: str) -> Any:
        response = requests.get(self.url + path, auth=self._auth(), timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: Any, timeout: float = 300) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = requests.post(self.url + path, data=data, auth=self._auth(), timeout=timeout)
        response.raise_for_status()
        return response.json() if response.content else None

    def upload(self, paths: list[Path]) -> str:
        """POST each file to /instances; return the Orthanc ID of their study."""
        study = ""
        for path in paths:
            study = str(self.post("/instances", path.read_bytes())["ParentStudy"])
        return study

    def send_study(self, study_id: str, modality: str) -> Any:
        """C-STORE a whole study to a configured modality (REST /modalities/{id}/store)."""
        return self.post(f"/modalities/{modality}/store", {"Resources": [study_id]})

    def study_id(self, study_uid: str) -> str | None:
        found = self.post("/tools/lookup", study_uid.encode())
        studies = [item["ID"] for item in found if item["Type"] == "Study"]
        return studies[0] if studies else None

    def instances_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """Every instance of the study with its main tags (SOPClassUID and UIDs)."""
        study = self.study_id(study_uid)
        if study is None:
            return []
        instances = self.get(f"/studies/{study}/instances?expand")
        out = []
        for item in instances:
            tags = self.get(f"/instances/{item['ID']}/simplified-tags")
            out.append({"ID": item["ID"], **tags})
        return out

    def instance_file(self, orthanc_id: str) -> bytes:
        response = requests.get(
            f"{self.url}/instances/{orthanc_id}/file", auth=self._auth(), timeout=30
        )
        response.raise_for_status()
        return response.content
