"""A host joins through the gateway (`trainyard agent --join`): the only routes without a bearer
token besides /health. The join token is the credential; the CA is public."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import msgspec
from litestar import Request, Response, get, post
from litestar.handlers import HTTPRouteHandler

from gateway.errors import Conflict, Forbidden, InvalidField, NotFound, decode_body
from gateway.runtime import GatewayRuntime
from shared import tls
from shared.ids import TOKEN_RE
from shared.nats import auth as natsauth
from shared.nats import join


class JoinRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    host: Annotated[str, msgspec.Meta(pattern=TOKEN_RE.pattern)]
    nkey: Annotated[str, msgspec.Meta(max_length=64)]


class JoinAnswer(msgspec.Struct, kw_only=True):
    host: str
    user: str  # the NATS user whose permissions the host's key now has


_join_decoder = msgspec.json.Decoder(JoinRequest)


def join_routes(runtime: GatewayRuntime, prefix: str) -> list[HTTPRouteHandler]:
    data_dir = Path(runtime.settings.data_dir)
    nats_dir = data_dir / "nats"

    @post(f"{prefix}/hosts/join", status_code=200)
    async def join_host(request: Request) -> JoinAnswer:
        """Redeem a one-time join token (`trainyard host add`) for the public half of the nkey
        the host made: the host may then connect as its agent user. 403: the token is unknown,
        used, expired or for another host; 409: the host joined already."""
        req = decode_body(_join_decoder, await request.body(), None)
        if req is None:
            raise InvalidField('a body {"token", "host", "nkey"} is required', field="token")
        if not natsauth.credentials_dir(nats_dir).is_dir():
            raise Conflict("this gateway does not manage nats-server's users (it was not started by trainyard up); "
                           "add the host's nkey to nats.conf instead")
        try:
            identity = await asyncio.to_thread(join.redeem, nats_dir, req.token, req.host, req.nkey)
        except join.JoinRefused as exc:
            error = {403: Forbidden, 409: Conflict}.get(exc.status)
            if error is None:
                raise InvalidField(exc.reason, field="nkey") from None
            raise error(exc.reason) from None
        return JoinAnswer(host=identity.host, user=natsauth.agent_user(identity.host))

    @get(f"{prefix}/join/ca.pem", media_type="application/x-pem-file")
    async def join_ca() -> Response[bytes]:
        """The CA that signs this gateway's and nats-server's certificates (`trainyard up
        --listen`); a joining host checks it against its `--ca-pin`."""
        path = tls.tls_dir(data_dir) / tls.CA_FILE
        if not path.exists():
            raise NotFound("this trainyard has no CA: it listens on loopback only (trainyard up --listen ADDR)")
        return Response(path.read_bytes(), media_type="application/x-pem-file")

    return [join_host, join_ca]
