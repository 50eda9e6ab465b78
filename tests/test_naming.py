"""Image, cache and cache-mount names: one-to-one over (userId, projectId), readable where the id
allows, valid for a registry, and cache-mount namespaces keyed with a server-side secret.

Pure unit tests over builds/services/steps/naming.py; the pushed names are exercised end to end by the
build tests.
"""

import hashlib
import itertools
import re

from django.conf import settings as django_settings
from hypothesis import given, settings, strategies as st

from builds.services.steps import naming

# The registry's repository path component (distribution/reference).
COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
TRICKY_IDS = [
    "alice", "Alice", "ALICE", "a__b", "a-b", "a_b", "a.b", "a--b", "a..b", "a_-b", "-a", "a-", ".a", "_a",
    "a", "A", "x", "X", "_", "-", "a" * 64, "a" * 65, "a" * 64 + "b", "p" * 100 + "1", "p" * 100 + "2",
    "tester", "demo-project", "My_Org",
]
ids = st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True)


def test_lossless_ids_keep_their_names():
    registry = django_settings.REGISTRY_URL
    assert naming.image_repository("tester", "demo-project") == f"{registry}/tester/demo-project"
    assert naming.image_name("u1", "web.v2", "job-1") == f"{registry}/u1/web.v2:job-1"
    assert naming.cache_ref("my_org", "a-b") == f"{registry}/my_org/a-b/buildcache:latest"


def test_ids_differing_only_in_case_get_different_repositories():
    assert naming.image_repository("Alice", "web") != naming.image_repository("alice", "web")
    assert naming.image_repository("u", "Web") != naming.image_repository("u", "web")


def test_ids_that_read_alike_get_different_repositories():
    names = {naming.repository_component(value) for value in ("a__b", "a-b", "a_b", "a.b", "a--b", "a..b", "a_-b")}
    assert len(names) == 7


def test_long_ids_sharing_a_prefix_get_different_repositories():
    first, second = "p" * 100 + "1", "p" * 100 + "2"
    assert naming.repository_component(first) != naming.repository_component(second)
    assert naming.cache_ref("u", first) != naming.cache_ref("u", second)


def test_a_lossy_id_keeps_a_readable_prefix_and_the_hash_of_the_exact_id():
    digest = hashlib.sha256(b"Alice").hexdigest()
    assert naming.repository_component("Alice") == f"alice--{digest[:naming.HASH_DIGITS]}"


def test_an_id_spelled_like_a_hashed_name_does_not_take_it():
    hashed = naming.repository_component("Alice")
    assert naming.repository_component(hashed) != hashed


def test_every_pair_of_tricky_ids_maps_to_its_own_repository_and_cache():
    seen_images, seen_caches = {}, {}
    for pair in itertools.product(TRICKY_IDS, repeat=2):
        image, cache = naming.image_repository(*pair), naming.cache_ref(*pair)
        assert seen_images.setdefault(image, pair) == pair, (image, seen_images[image], pair)
        assert seen_caches.setdefault(cache, pair) == pair
        assert image not in seen_caches and cache not in seen_images


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.text(alphabet="aA_-.1", min_size=1, max_size=4) | ids, min_size=2, max_size=10, unique=True))
def test_different_pairs_never_share_a_repository(values):
    pairs = list(itertools.product(values, repeat=2))
    assert len({naming.image_repository(*pair) for pair in pairs}) == len(pairs)
    assert len({naming.cache_namespace(*pair) for pair in pairs}) == len(pairs)


@settings(max_examples=300, deadline=None)
@given(value=ids)
def test_every_component_is_a_valid_registry_name_of_at_most_64_characters(value):
    component = naming.repository_component(value)
    assert COMPONENT.fullmatch(component) and len(component) <= 64


def test_cache_namespace_depends_on_the_server_secret(settings):
    settings.CACHE_NAMESPACE_SECRET = "first-secret"
    first = naming.cache_namespace("u1", "web")
    settings.CACHE_NAMESPACE_SECRET = "second-secret"
    assert naming.cache_namespace("u1", "web") != first


def test_cache_namespace_cannot_be_computed_from_the_ids_alone(settings):
    settings.CACHE_NAMESPACE_SECRET = "server-side"
    namespace = naming.cache_namespace("u1", "web")
    assert hashlib.sha256(b"u1\0web").hexdigest()[:24] not in namespace
    assert re.fullmatch(r"p[0-9a-f]{32}", namespace)
