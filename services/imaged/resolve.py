"""From the image string the kubelet sent to one image manifest and config in one registry.

Order, as in CRI-O (containers/image): each name the string may mean (aliases,
unqualified-search registries, else Docker Hub); for each, the signature policy
and registries.conf (blocked -> refused); then its mirrors in order and the
main location, a failing source falling through to the next. A mirror that is
itself blocked in registries.conf is skipped without being contacted. The first source
that serves a manifest for the configured platform and its config wins; the
layers are then downloaded from that same source.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from services.imaged import auth, credential_helpers, policy
from services.imaged.connections import ConnectionPool
from services.imaged.distribution import RegistryClient
from services.imaged.host_config import HostConfig
from services.imaged.manifest import (
    ImageConfig,
    ImageIndex,
    ImageManifest,
    normalize_platform,
    parse_image_config,
    parse_manifest,
    select_platform,
)
from services.imaged.reference import ImageReference, parse_reference
from services.imaged.registries_conf import PullSource, candidates, pull_sources
from shared.config import ImagedConfig
from shared.errors import CriplexError, DataLoss, FailedPrecondition, PermissionDenied
from shared.schema.imaged import RegistryAuth

log = logging.getLogger(__name__)

_MAX_INDEX_DEPTH = 2


@dataclass(frozen=True)
class ResolvedImage:
    name: ImageReference  # the qualified name the image is recorded under (never a mirror's)
    source: PullSource
    client: RegistryClient
    top_digest: str  # what the name resolved to: the index's digest for a multi-platform image
    manifest_digest: str
    manifest: ImageManifest
    config: ImageConfig


class Resolver:
    def __init__(self, config: ImagedConfig, host: HostConfig, pool: ConnectionPool,
                 tokens: auth.TokenCache) -> None:
        self._config = config
        self._host = host
        self._pool = pool
        self._tokens = tokens

    async def resolve(self, image: str, cri_auth: RegistryAuth | None) -> ResolvedImage:
        ref = parse_reference(image)
        cri_creds = auth.from_cri(cri_auth)
        conf = self._host.registries()
        pol = self._host.policy()
        failures: list[tuple[str, CriplexError]] = []
        for name in candidates(conf, ref):
            try:
                policy.check(pol, name)
                sources = pull_sources(conf, name)
            except CriplexError as exc:
                failures.append((str(name), exc))
                continue
            for source in sources:
                if source.blocked:
                    failures.append((f"{source.reference} (mirror)", PermissionDenied(
                        f"registry {source.reference.domain} is blocked in registries.conf")))
                    continue
                try:
                    return await self._resolve_at(name, source, cri_creds)
                except CriplexError as exc:
                    where = f"{source.reference}" + (" (mirror)" if source.mirror else "")
                    log.info("pull %s: %s failed: %s", image, where, exc.message)
                    failures.append((where, exc))
        raise _combined(image, failures)

    async def client_for(self, source: PullSource, cri_creds: auth.Credentials | None) -> RegistryClient:
        # The kubelet's credentials were chosen for the name's own registry: they go to its
        # (possibly rewritten) location, never to a mirror the administrator added.
        ref = source.reference
        creds = cri_creds if cri_creds is not None and not source.mirror else None
        if creds is None:
            creds = await self._node_credentials(ref)
        connection = self._pool.get(ref.domain, source.insecure)
        return RegistryClient(connection, ref.path, creds, self._tokens, self._pool.auth_http,
                              self._config.retries)

    async def _node_credentials(self, ref: ImageReference) -> auth.Credentials | None:
        """The node's own credentials for `ref`, in containers/image's order: the host's
        credHelpers entry, else the most specific "auths" entry; then the credsStore."""
        auths = self._host.auths()
        helper = auths.helpers.get(ref.domain)
        if helper:
            return await self._ask_helper(helper, ref.domain)
        creds = auth.lookup(auths.entries, ref.name)
        if creds is None and auths.store:
            creds = await self._ask_helper(auths.store, ref.domain)
        return creds

    async def _ask_helper(self, helper: str, host: str) -> auth.Credentials | None:
        return await credential_helpers.helper_credentials(helper, host, self._config.credential_helper_dirs,
                                                           self._config.credential_helper_timeout)

    async def _resolve_at(self, name: ImageReference, source: PullSource,
                          cri_creds: auth.Credentials | None) -> ResolvedImage:
        client = await self.client_for(source, cri_creds)
        fetched = await client.manifest(source.reference.digest or source.reference.tag)
        top_digest = fetched.digest
        parsed: ImageManifest | ImageIndex = parse_manifest(fetched.body, fetched.media_type)
        depth = 0
        while isinstance(parsed, ImageIndex):
            depth += 1
            if depth > _MAX_INDEX_DEPTH:
                raise FailedPrecondition(f"{source.reference}: image indexes nested deeper than {_MAX_INDEX_DEPTH}")
            entry = select_platform(parsed, self._config.platform)
            fetched = await client.manifest(entry.digest)
            parsed = parse_manifest(fetched.body, fetched.media_type)
        manifest = parsed
        config = parse_image_config(await client.blob(manifest.config))
        if len(config.diff_ids) != len(manifest.layers):
            raise DataLoss(f"{source.reference}: the manifest lists {len(manifest.layers)} layers but the "
                           f"config {len(config.diff_ids)} diff_ids")
        if not manifest.layers:
            raise FailedPrecondition(f"{source.reference}: the image has no layers, nothing to run")
        wanted, got = normalize_platform(self._config.platform), normalize_platform(config.platform)
        if config.platform and got[:2] != wanted[:2]:
            # A single-platform manifest is what the name points to; containers/image warns too.
            log.warning("pull %s: image is for %s, this node is %s", name, config.platform,
                        self._config.platform)
        return ResolvedImage(name, source, client, top_digest, fetched.digest, manifest, config)


def _combined(image: str, failures: list[tuple[str, CriplexError]]) -> CriplexError:
    """One error for all attempts: the last one's kind (the main location, or the last
    search registry), with every attempt's reason in the message."""
    if not failures:
        return FailedPrecondition(f"pulling {image}: no registry to try")
    if len(failures) == 1:
        return failures[0][1]
    last = failures[-1][1]
    detail = "; ".join(f"{where}: {exc.message}" for where, exc in failures)
    return type(last)(f"pulling {image} failed at every source: {detail}")
