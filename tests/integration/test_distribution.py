"""Pull and push against real registries (Debian's docker-registry, plain,
htpasswd and token auth), skopeo as a second client, and a faulty registry
for every failure a pull must survive or report clearly."""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import subprocess

import pytest

from dockyard import errdefs
from dockyard.image.content import LocalContentStore
from dockyard.image.core import Descriptor
from dockyard.image.distribution import (
    Credentials,
    CredentialStore,
    PullResult,
    pull,
    push,
)
from dockyard.image.distribution.pull import PullOptions
from dockyard.image.distribution.push import PushOptions
from tests.fixtures.registry import OCI_INDEX, make_test_image, push_test_image, sha256

pytestmark = [pytest.mark.integration]

FAST = PullOptions(backoff_s=0.01)
ALICE = Credentials("alice", "alicepw")


@pytest.fixture
def stores(tmp_path):
    opened = []

    def make(name: str) -> LocalContentStore:
        store = LocalContentStore(tmp_path / name)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def _assert_complete(store: LocalContentStore, image, result: PullResult) -> None:
    assert result.manifest_descriptor.digest == image.manifest_digest
    assert result.config_descriptor.digest == image.config_digest
    assert [layer.digest for layer in result.layers] == image.layer_digests
    assert store.read_blob(image.manifest_digest) == image.manifest
    for digest, data in image.blobs().items():
        assert store.read_blob(digest) == data


def _visible_blobs_are_sound(store: LocalContentStore) -> set[str]:
    seen = set()
    for info in store.walk():
        assert sha256(store.read_blob(info.digest)) == info.digest
        seen.add(info.digest)
    return seen


# ------------------------------------------------------------------ plain registry


def test_push_then_pull_round_trip(registry, stores):
    image = make_test_image(layer_count=3, layer_size=50_000)
    source = stores("source")
    target = image.ingest(source)
    ref = registry.repo("roundtrip") + ":v1"
    pushed = push(ref, source, target)
    assert pushed.digest == image.manifest_digest
    assert set(pushed.uploaded) == set(image.blobs())

    events, unpacked = [], []
    dest = stores("dest")
    result = pull(ref, dest, progress=events.append, unpack=unpacked.append, options=FAST)
    _assert_complete(dest, image, result)
    assert result.target == result.manifest_descriptor
    # unpack sees layers in manifest order, each only after it is verified
    assert [layer.digest for layer in unpacked] == image.layer_digests
    statuses = {(e.id, e.status) for e in events}
    for digest in image.layer_digests:
        short = digest[7:19]
        for status in ("Pulling fs layer", "Verifying Checksum", "Download complete",
                       "Extracting", "Pull complete"):
            assert (short, status) in statuses
    # source labels let a later push cross-mount
    label = "containerd.io/distribution.source." + registry.host
    assert dest.info(image.layer_digests[0]).labels[label] == result.reference.path

    # pulling again finds everything present; pull by digest works too
    events.clear()
    again = pull(f"{ref.rsplit(':', 1)[0]}@{image.manifest_digest}", dest,
                 progress=events.append, options=FAST)
    assert again.manifest_descriptor.digest == image.manifest_digest
    assert {e.status for e in events if e.id} == {"Already exists"}


def test_chunked_upload(registry, stores):
    image = make_test_image(layer_count=1, layer_size=300_000)
    source = stores("source")
    target = image.ingest(source)
    ref = registry.repo("chunked") + ":latest"
    push(ref, source, target, options=PushOptions(chunk_threshold=64 * 1024,
                                                  chunk_size=100_000))
    assert registry.log().count('"PATCH /v2/' + ref.split("/", 1)[1].split(":")[0]) >= 3
    dest = stores("dest")
    _assert_complete(dest, image, pull(ref, dest, options=FAST))


def test_cross_repository_mount(registry, stores):
    image = make_test_image(layer_count=2, layer_size=20_000)
    source = stores("source")
    target = image.ingest(source)
    first = registry.repo("mount-a") + ":1"
    second = registry.repo("mount-b") + ":1"
    push(first, source, target)
    result = push(second, source, target)
    assert set(result.mounted) == set(image.blobs())
    assert result.uploaded == ()
    second_repo = second.split("/", 1)[1].split(":")[0]
    log = registry.log()
    assert f"POST /v2/{second_repo}/blobs/uploads/?mount=" in log.replace("%3A", ":")
    assert f"PUT /v2/{second_repo}/blobs/uploads/" not in log
    dest = stores("dest")
    _assert_complete(dest, image, pull(second, dest, options=FAST))


def test_pushing_an_existing_image_skips_every_blob(registry, stores):
    source = stores("source")
    image, ref = push_test_image(registry, source, "again", tag="1", layer_count=1)
    target = Descriptor(image.manifest_media_type, image.manifest_digest, len(image.manifest))
    result = push(ref.replace(":1", ":2"), source, target)
    assert set(result.skipped) == set(image.blobs())


def test_index_pull_selects_platform(registry, stores):
    amd = make_test_image(layer_count=1, layer_size=1000, architecture="amd64")
    arm = make_test_image(layer_count=1, layer_size=1000, architecture="arm64")
    source = stores("source")
    entries = []
    for image, arch in ((amd, "amd64"), (arm, "arm64")):
        desc = image.ingest(source)
        entries.append({**desc.to_json(), "platform": {"os": "linux", "architecture": arch}})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                        "manifests": entries}).encode()
    writer = source.writer("test-index", total=len(index), expected=sha256(index))
    writer.write(index)
    writer.commit(len(index), sha256(index))
    ref = registry.repo("multi") + ":1"
    push(ref, source, Descriptor(OCI_INDEX, sha256(index), len(index)))

    dest = stores("dest")
    result = pull(ref, dest, platform="linux/arm64", options=FAST)
    assert result.target.digest == sha256(index)
    assert dest.read_blob(sha256(index)) == index
    _assert_complete(dest, arm, result)
    with pytest.raises(errdefs.NotFound, match="no matching manifest for linux/s390x in the "
                                               "manifest list entries"):
        pull(ref, dest, platform="linux/s390x", options=FAST)


def test_missing_manifest_is_not_found(registry, stores):
    ref = registry.repo("absent") + ":nope"
    with pytest.raises(errdefs.NotFound, match=r"manifest for .*:nope not found: manifest unknown"):
        pull(ref, stores("dest"), options=FAST)


# ------------------------------------------------------------------ htpasswd


def test_htpasswd_with_docker_config(registry_htpasswd, stores, tmp_path, monkeypatch):
    config_dir = tmp_path / "docker-config"
    config_dir.mkdir()
    auth = base64.b64encode(b"alice:alicepw").decode()
    (config_dir / "config.json").write_text(json.dumps(
        {"auths": {f"http://{registry_htpasswd.host}": {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
    image = make_test_image(layer_count=1, layer_size=5000)
    source = stores("source")
    ref = registry_htpasswd.repo("basic") + ":1"
    push(ref, source, image.ingest(source), credentials=CredentialStore())
    dest = stores("dest")
    _assert_complete(dest, image, pull(ref, dest, credentials=CredentialStore(), options=FAST))

    (config_dir / "config.json").write_text(json.dumps({"auths": {registry_htpasswd.host: {
        "username": "alice", "password": "wrong"}}}))
    with pytest.raises(errdefs.Unauthorized, match="pull access denied"):
        pull(ref, stores("dest2"), credentials=CredentialStore(), options=FAST)
    with pytest.raises(errdefs.Unauthorized):
        pull(ref, stores("dest3"), options=FAST)  # anonymous


# ------------------------------------------------------------------ token auth


def test_token_auth_scopes(registry_token, token_server, stores):
    image = make_test_image(layer_count=2, layer_size=5000)
    source = stores("source")
    target = image.ingest(source)
    alice = CredentialStore(static={registry_token.host: ALICE})
    suffix = registry_token.repo("x").rsplit("/", 1)[1]
    private = f"{registry_token.host}/alice/{suffix}:1"
    public = f"{registry_token.host}/public/{suffix}:1"

    push(private, source, target, credentials=alice)
    push(public, source, target, credentials=alice)
    granted = [r for r in token_server.requests if r.get("account") == "alice"]
    assert any(g["name"] == f"alice/{suffix}" and g["actions"] == ["pull", "push"]
               for r in granted for g in r["granted"])

    dest = stores("dest")
    _assert_complete(dest, image, pull(public, dest, options=FAST))  # anonymous
    with pytest.raises(errdefs.Unauthorized, match="pull access denied for"):
        pull(private, stores("anon"), options=FAST)
    with pytest.raises(errdefs.Unauthorized, match="denied"):
        push(f"{registry_token.host}/public/{suffix}-anon:1", source, target)
    _assert_complete(stores("alice"), image, pull(private, stores("alice"), credentials=alice,
                                                  options=FAST))
    wrong = CredentialStore(static={registry_token.host: Credentials("alice", "nope")})
    with pytest.raises(errdefs.Unauthorized, match="incorrect username or password"):
        pull(private, stores("wrong"), credentials=wrong, options=FAST)


# ------------------------------------------------------------------ skopeo interop


@pytest.fixture
def skopeo():
    path = shutil.which("skopeo")
    if path is None:
        pytest.skip("skopeo not installed")
    return path


def test_skopeo_reads_what_dockyard_pushed(registry, stores, skopeo):
    image = make_test_image(layer_count=2, layer_size=3000)
    source = stores("source")
    ref = registry.repo("to-skopeo") + ":1"
    push(ref, source, image.ingest(source))
    out = subprocess.run([skopeo, "inspect", "--tls-verify=false", f"docker://{ref}"],
                         check=True, capture_output=True, text=True, timeout=30).stdout
    info = json.loads(out)
    assert info["Digest"] == image.manifest_digest
    assert info["Layers"] == image.layer_digests
    assert info["Architecture"] == "amd64"


def test_dockyard_pulls_what_skopeo_copied(registry, stores, skopeo, tmp_path):
    image = make_test_image(layer_count=2, layer_size=3000)
    layout = tmp_path / "layout"
    image.write_oci_layout(layout, "v1")
    ref = registry.repo("from-skopeo") + ":v1"
    subprocess.run([skopeo, "copy", "--dest-tls-verify=false", f"oci:{layout}:v1",
                    f"docker://{ref}"], check=True, capture_output=True, timeout=30)
    dest = stores("dest")
    result = pull(ref, dest, options=FAST)
    # skopeo may rewrite the manifest; the layers and config are what must survive
    assert [layer.digest for layer in result.layers] == image.layer_digests
    assert dest.read_blob(result.config_descriptor.digest) == image.config
    for layer in result.layers:
        assert gzip.decompress(dest.read_blob(layer.digest))


# ------------------------------------------------------------------ faulty registry


def _serve(faulty, **kwargs):
    image = make_test_image(**{"layer_count": 2, "layer_size": 200_000, **kwargs})
    faulty.serve_image("repo", image)
    return image, f"{faulty.host}/repo:latest"


def test_wrong_digest_is_data_loss_and_never_visible(faulty_registry, stores):
    image, ref = _serve(faulty_registry)
    bad = image.layer_digests[1]
    faulty_registry.bad_blobs[bad] = b"x" * len(image.layers[1])
    store = stores("dest")
    with pytest.raises(errdefs.DataLoss, match=rf"failed to pull {ref}: layer {bad} digest "
                                               rf"mismatch: expected {bad} got sha256:"):
        pull(ref, store, options=FAST)
    visible = _visible_blobs_are_sound(store)
    assert bad not in visible
    assert sha256(b"x" * len(image.layers[1])) not in visible


def test_truncated_layer_resumes_with_range(faulty_registry, stores):
    image, ref = _serve(faulty_registry)
    faulty_registry.truncate[image.layer_digests[0]] = 1
    store = stores("dest")
    _assert_complete(store, image, pull(ref, store, options=FAST))
    ranges = [r for m, p, r in faulty_registry.requests if image.layer_digests[0] in p and r]
    assert ranges and ranges[0].startswith("bytes=") and ranges[0] != "bytes=0-"


def test_always_truncated_layer_fails_cleanly(faulty_registry, stores):
    image, ref = _serve(faulty_registry)
    faulty_registry.truncate[image.layer_digests[0]] = 100
    store = stores("dest")
    with pytest.raises((errdefs.DataLoss, errdefs.Unavailable),
                       match=rf"failed to pull {ref}: layer {image.layer_digests[0]}"):
        pull(ref, store, options=FAST)
    assert image.layer_digests[0] not in _visible_blobs_are_sound(store)


def test_unauthorized_registry(faulty_registry, stores):
    _, ref = _serve(faulty_registry)
    faulty_registry.require_auth = True
    with pytest.raises(errdefs.Unauthorized,
                       match="pull access denied for .*/repo, repository does not exist or "
                             "may require 'docker login'"):
        pull(ref, stores("dest"), options=FAST)


def test_not_found_manifest(faulty_registry, stores):
    _serve(faulty_registry)
    ref = f"{faulty_registry.host}/repo:missing"
    with pytest.raises(errdefs.NotFound, match=f"manifest for {ref} not found: manifest unknown"):
        pull(ref, stores("dest"), options=FAST)


def test_429_then_success(faulty_registry, stores):
    image, ref = _serve(faulty_registry)
    faulty_registry.faults["manifests/latest"] = [429]
    faulty_registry.faults[f"blobs/{image.layer_digests[0]}"] = [503, 429]
    store = stores("dest")
    _assert_complete(store, image, pull(ref, store, options=FAST))


def test_persistent_500_is_unavailable(faulty_registry, stores):
    image, ref = _serve(faulty_registry)
    faulty_registry.faults[f"blobs/{image.layer_digests[1]}"] = [500] * 20
    store = stores("dest")
    with pytest.raises(errdefs.Unavailable, match=image.layer_digests[1]):
        pull(ref, store, options=FAST)
    assert image.layer_digests[1] not in _visible_blobs_are_sound(store)


def test_index_for_another_platform_only(faulty_registry, stores):
    image = make_test_image(layer_count=1, layer_size=100, architecture="s390x")
    faulty_registry.serve_image("repo", image, tag="manifest")
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{
        "mediaType": image.manifest_media_type, "digest": image.manifest_digest,
        "size": len(image.manifest), "platform": {"os": "linux", "architecture": "s390x"}}],
    }).encode()
    faulty_registry.manifests["repo/manifests/latest"] = (index, OCI_INDEX)
    with pytest.raises(errdefs.NotFound, match="no matching manifest for linux/amd64 in the "
                                               "manifest list entries"):
        pull(f"{faulty_registry.host}/repo:latest", stores("dest"), platform="linux/amd64",
             options=FAST)


def test_manifest_digest_mismatch(faulty_registry, stores):
    image, _ = _serve(faulty_registry)
    wrong = "sha256:" + "0" * 64
    # the registry answers a digest request with bytes of another digest
    faulty_registry.manifests[f"repo/manifests/{wrong}"] = (image.manifest,
                                                            image.manifest_media_type)
    store = stores("dest2")
    with pytest.raises(errdefs.DataLoss, match="digest mismatch"):
        pull(f"{faulty_registry.host}/repo@{wrong}", store, options=FAST)
    assert _visible_blobs_are_sound(store) == set()


def test_concurrent_pulls_of_one_image_share_the_store(registry, stores):
    import threading

    image = make_test_image(layer_count=3, layer_size=100_000)
    source = stores("source")
    ref = registry.repo("concurrent") + ":1"
    push(ref, source, image.ingest(source))
    dest = stores("dest")
    results, errors = [], []

    def run() -> None:
        try:
            results.append(pull(ref, dest, options=FAST))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    for result in results:
        _assert_complete(dest, image, result)


def test_docker_hub_names_go_to_the_mirror(registry, stores):
    from dockyard.image.distribution import RegistryConfig

    image = make_test_image(layer_count=1, layer_size=2000)
    source = stores("source")
    name = registry.repo("hub").split("/", 1)[1]
    # an official image lives under library/ on a Docker Hub mirror
    push(f"{registry.host}/library/{name}:1", source, image.ingest(source))
    dest = stores("dest")
    result = pull(f"{name}:1", dest, config=RegistryConfig(mirrors=(registry.url,)),
                  options=FAST)
    assert str(result.reference) == f"docker.io/library/{name}:1"
    _assert_complete(dest, image, result)
