"""Dockerfile-like change lines for `import --change` / `commit --change`,
and the image-name store's filters."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from dockyard import errdefs
from dockyard.image.core import Descriptor
from dockyard.image.images import Image, ImageStore
from dockyard.image.importer import apply_changes, compress_layer, rfc3339


def test_cmd_exec_and_shell_form() -> None:
    assert apply_changes({}, ['CMD ["sh"]'])["Cmd"] == ["sh"]
    assert apply_changes({}, ["CMD echo hi there"])["Cmd"] == ["/bin/sh", "-c", "echo hi there"]
    assert apply_changes({}, ['ENTRYPOINT ["/bin/x", "-v"]'])["Entrypoint"] == ["/bin/x", "-v"]


def test_env_forms_and_override() -> None:
    cfg = apply_changes({}, ["ENV A=b", 'ENV C="d e" F=g', "ENV LEGACY some value", "ENV A=z"])
    assert cfg["Env"] == ["C=d e", "F=g", "LEGACY=some value", "A=z"]


def test_expose_volume_label_user_workdir_stopsignal_onbuild() -> None:
    cfg = apply_changes({"Cmd": ["x"]}, [
        "EXPOSE 80 53/udp 8000-8001",
        'VOLUME ["/data", "/logs"]',
        "VOLUME /cache",
        'LABEL a=b "c.d"="e f"',
        "USER 1000:1000",
        "WORKDIR /srv",
        "WORKDIR app",
        "STOPSIGNAL SIGINT",
        "ONBUILD RUN echo hi",
    ])
    assert cfg["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}, "8000-8001/tcp": {}}
    assert cfg["Volumes"] == {"/data": {}, "/logs": {}, "/cache": {}}
    assert cfg["Labels"] == {"a": "b", "c.d": "e f"}
    assert cfg["User"] == "1000:1000"
    assert cfg["WorkingDir"] == "/srv/app"
    assert cfg["StopSignal"] == "SIGINT"
    assert cfg["OnBuild"] == ["RUN echo hi"]
    assert cfg["Cmd"] == ["x"]


def test_input_config_not_mutated() -> None:
    base = {"Env": ["A=1"]}
    apply_changes(base, ["ENV B=2"])
    assert base == {"Env": ["A=1"]}


@pytest.mark.parametrize("line", [
    "RUN echo no", "FROM busybox", "EXPOSE http", "EXPOSE 80/xyz", "ENV", "ENV ONLYKEY",
    "ONBUILD FROM x", "USER", 'ENV A="unterminated',
])
def test_invalid_changes_rejected(line: str) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        apply_changes({}, [line])


def test_compress_layer_is_reproducible_and_reports_diff_id() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    raw = buf.getvalue()
    out1, out2 = io.BytesIO(), io.BytesIO()
    first = compress_layer(io.BytesIO(raw), out1)
    second = compress_layer(io.BytesIO(raw), out2)
    assert first == second and out1.getvalue() == out2.getvalue()
    import hashlib

    assert first[0] == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert first[1] == "sha256:" + hashlib.sha256(out1.getvalue()).hexdigest()


def test_rfc3339() -> None:
    assert rfc3339(946684800) == "2000-01-01T00:00:00Z"
    assert rfc3339(946684800.25) == "2000-01-01T00:00:00.25Z"


# ------------------------------------------------------------- image store

_D1 = Descriptor("application/vnd.oci.image.manifest.v1+json", "sha256:" + "1" * 64, 10)
_D2 = Descriptor("application/vnd.oci.image.index.v1+json", "sha256:" + "2" * 64, 20)


def test_image_store_crud_and_filters(tmp_path) -> None:
    with ImageStore(tmp_path / "images.db") as store:
        created = store.create(Image("busybox", _D1, labels={"a": "1"}))
        assert created.name == "docker.io/library/busybox:latest"
        assert store.get("busybox:latest").target == _D1
        with pytest.raises(errdefs.AlreadyExists):
            store.create(Image("docker.io/library/busybox", _D2))
        store.create(Image("localhost:5000/x/y:v1", _D2, labels={"a": "2", "b.c": "x"}))
        assert [i.name for i in store.list()] == ["docker.io/library/busybox:latest",
                                                  "localhost:5000/x/y:v1"]
        assert [i.name for i in store.list("labels.a==2")] == ["localhost:5000/x/y:v1"]
        assert [i.name for i in store.list('labels."b.c"')] == ["localhost:5000/x/y:v1"]
        assert [i.name for i in store.list("name~=busy")] == ["docker.io/library/busybox:latest"]
        assert store.list(f"target.digest=={_D1.digest},labels.a==1")[0].target == _D1
        assert store.list("name!=docker.io/library/busybox:latest")[0].target == _D2
        with pytest.raises(errdefs.InvalidArgument):
            store.list("nosuchfield==1")

        updated = store.update(Image("busybox", _D2, labels={"z": "9"}), ["labels.z", "labels.a"])
        assert updated.labels == {"z": "9"} and updated.target == _D1
        updated = store.update(Image("busybox", _D2), ["target"])
        assert updated.target == _D2 and updated.created_at == created.created_at
        assert [i.name for i in store.by_digest(_D2.digest)] == [
            "docker.io/library/busybox:latest", "localhost:5000/x/y:v1"]

        store.delete("busybox")
        with pytest.raises(errdefs.NotFound):
            store.get("busybox")
        with pytest.raises(errdefs.NotFound):
            store.delete("busybox")
        with pytest.raises(errdefs.InvalidArgument):
            store.create(Image("Bad Name", _D1))


def test_image_store_persists(tmp_path) -> None:
    with ImageStore(tmp_path / "images.db") as store:
        store.put(Image("alpine:3", _D1))
        store.put(Image("alpine:3", _D2))  # retag moves the name
    with ImageStore(tmp_path / "images.db") as store:
        img = store.get("alpine:3")
        assert img.target == _D2
        assert json.loads(json.dumps(img.labels)) == {}
