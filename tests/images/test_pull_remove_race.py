"""PullImage and RemoveImage racing on the real runtime: no failed pull, no record without its layers.

Before imaged held the layers a pull found stored, and serialised an image's reference
and record against its removal, such races failed pulls with NotFound ("layer ... is
not stored") and left images listed whose layers storaged had collected.
"""

from __future__ import annotations

import asyncio
import json

import grpc

from shared.cri import api_pb2, api_pb2_grpc
from tests.images.test_image_service import remove
from tests.support.images import build_busybox_image
from tests.support.layers import files_layer
from tests.support.push import push


def storaged_holds(images) -> dict[str, str]:
    path = images.run.state_dir / "storaged" / "records" / "images.json"
    return json.loads(path.read_text())["images"] if path.exists() else {}


async def race(images, keep: str, other: str, rounds: int) -> tuple[list[str], list[str]]:
    """Each round: `other` is stored, then pulling `keep` races removing `other` (delays vary)."""
    errors: list[str] = []
    inconsistent: list[str] = []
    async with grpc.aio.insecure_channel(f"unix://{images.run.socket}") as channel:
        stub = api_pb2_grpc.ImageServiceStub(channel)

        def spec(name: str) -> api_pb2.ImageSpec:
            return api_pb2.ImageSpec(image=name)

        async def pull(name: str) -> None:
            try:
                await stub.PullImage(api_pb2.PullImageRequest(image=spec(name)), timeout=60)
            except grpc.aio.AioRpcError as exc:
                errors.append(exc.details())

        async def remove(name: str, delay: float) -> None:
            await asyncio.sleep(delay)
            await stub.RemoveImage(api_pb2.RemoveImageRequest(image=spec(name)), timeout=30)

        for i in range(rounds):
            if keep != other:
                await stub.RemoveImage(api_pb2.RemoveImageRequest(image=spec(keep)), timeout=30)
            await stub.PullImage(api_pb2.PullImageRequest(image=spec(other)), timeout=60)
            await asyncio.gather(pull(keep), remove(other, 0.002 * (i % 5)))
            status = await stub.ImageStatus(api_pb2.ImageStatusRequest(image=spec(keep)), timeout=10)
            if status.HasField("image") and status.image.id not in storaged_holds(images):
                inconsistent.append(status.image.id)
    return errors, inconsistent


def test_pulling_an_image_while_it_is_removed(images, repo):
    image = build_busybox_image([files_layer({"/race": b"same\n"})])
    push(images.registry, f"{repo}:v1", image)
    ref = f"{images.registry.host}/{repo}:v1"
    errors, inconsistent = asyncio.run(race(images, ref, ref, rounds=25))
    remove(images, ref)  # its base layer must not be held when the next test runs
    assert errors == []
    assert inconsistent == []  # a listed image always holds its layers in storaged


def test_pulling_an_image_while_one_sharing_its_layers_is_removed(images, repo):
    old = build_busybox_image([files_layer({"/version": b"1\n"})])
    new = build_busybox_image([files_layer({"/version": b"2\n"})])
    push(images.registry, f"{repo}:old", old)
    push(images.registry, f"{repo}:new", new)
    base = f"{images.registry.host}/{repo}"
    errors, inconsistent = asyncio.run(race(images, f"{base}:new", f"{base}:old", rounds=25))
    remove(images, f"{base}:new")
    assert errors == []
    assert inconsistent == []
