"""The API's dependencies: thin `Annotated` aliases over the app's state and the platform's
guards, so each route declares what it needs and holds no auth logic (the domain lives behind
the `Platform` facade: platform/gate.py, platform/scopes.py).

Headers: `Authorization: Bearer <key>` on the OpenAI, DeepInfra and Infomaniak routes, `x-api-key`
on EGP's; `x-selected-account-id` picks which of the key's accounts acts (a foreign one is 403).
Open mode is the platform's decision, made per request (see platform/gate.py).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from chatforge.api.metrics import Metrics
from chatforge.api.serving import Serving
from chatforge.platform.gate import Platform, Principal
from chatforge.platform.scopes import Caller
from chatforge.service.catalog import ModelCatalog


def _serving(request: Request) -> Serving:
    return request.app.state.serving


def _catalog(request: Request) -> ModelCatalog:
    return request.app.state.catalog


def _platform(request: Request) -> Platform:
    return request.app.state.platform


def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


ServingDep = Annotated[Serving, Depends(_serving)]
CatalogDep = Annotated[ModelCatalog, Depends(_catalog)]
PlatformDep = Annotated[Platform, Depends(_platform)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]

Authorization = Annotated[str | None, Header(description="`Bearer <API key>`; required once keys exist")]
ApiKey = Annotated[str | None, Header(alias="x-api-key", description="the API key; required once keys exist")]
SelectedAccount = Annotated[str | None, Header(alias="x-selected-account-id",
                                                description="which of the key's accounts acts and pays")]


def bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


async def bearer_principal(platform: PlatformDep, authorization: Authorization = None,
                           x_selected_account_id: SelectedAccount = None) -> Principal:
    return await platform.authenticate(bearer_token(authorization), x_selected_account_id)


async def api_key_principal(platform: PlatformDep, x_api_key: ApiKey = None,
                            x_selected_account_id: SelectedAccount = None) -> Principal:
    return await platform.authenticate(x_api_key, x_selected_account_id)


BearerPrincipal = Annotated[Principal, Depends(bearer_principal)]
ApiKeyPrincipal = Annotated[Principal, Depends(api_key_principal)]


async def bearer_caller(principal: BearerPrincipal) -> Caller:
    return Caller(principal)


async def product_caller(product_id: int, principal: BearerPrincipal, platform: PlatformDep) -> Caller:
    return Caller(principal, product=await platform.product_scope(principal, product_id))


async def deployment_caller(model_deployment_id: str, principal: ApiKeyPrincipal, platform: PlatformDep) -> Caller:
    return Caller(principal, deployment=await platform.deployment_scope(principal, model_deployment_id))


BearerCaller = Annotated[Caller, Depends(bearer_caller)]
ProductCaller = Annotated[Caller, Depends(product_caller)]
DeploymentCaller = Annotated[Caller, Depends(deployment_caller)]
