"""The criteria endpoints: OpenPipe's `POST /criteria/judge` and our definitions API (docs/api.md)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from pipeserve.errors import judge_failure
from pipeserve.protocol.criteria import (
    AlignmentRequest,
    CreateCriterionRequest,
    CriterionList,
    JudgeRequest,
    JudgeResponse,
    JudgeUsage,
    NewCriterionVersionRequest,
)
from pipeserve.server.auth import Authenticated
from pipeserve.server.body import parse_body
from pipeserve.server.responses import json_response
from pipeserve.service.criteria import CriteriaService
from pipeserve.service.judge import Judge, align, judge_input, judge_output

router = APIRouter()


def _criteria(request: Request) -> CriteriaService:
    service: CriteriaService = request.app.state.criteria
    return service


def _judge(request: Request) -> Judge:
    judge: Judge = request.app.state.judge
    return judge


@router.get("/criteria")
async def list_criteria(request: Request, principal: Authenticated) -> Response:
    found = await _criteria(request).list_latest(principal.project)
    return json_response(CriterionList(data=[c.to_wire() for c in found]))


@router.post("/criteria")
async def create_criterion(request: Request, principal: Authenticated) -> Response:
    body = await parse_body(request, CreateCriterionRequest)
    return json_response((await _criteria(request).create(principal.project, body)).to_wire())


@router.post("/criteria/judge")
async def judge(request: Request, principal: Authenticated) -> Response:
    body = await parse_body(request, JudgeRequest)
    criterion = await _criteria(request).get(principal.project, body.criterion_id, param="criterion_id")
    verdict = await _judge(request).judge(criterion, judge_input(body.input), judge_output(body.output))
    if verdict.status != "success" or verdict.score is None:
        # This endpoint has no error entry: the judge's failure is the request's.
        raise judge_failure(
            verdict.error_message or f"The judge of {criterion.ref} gave no verdict; retry, or check its judge model.",
            verdict.error_code,
        )
    usage = JudgeUsage(
        total_tokens=verdict.prompt_tokens + verdict.completion_tokens,
        prompt_tokens=verdict.prompt_tokens,
        completion_tokens=verdict.completion_tokens,
    )
    return json_response(
        JudgeResponse(score=verdict.score, explanation=verdict.explanation, usage=usage, criterion=criterion.ref)
    )


@router.get("/criteria/{name}")
async def get_criterion(name: str, request: Request, principal: Authenticated) -> Response:
    return json_response((await _criteria(request).get(principal.project, name)).to_wire())


@router.get("/criteria/{name}/versions")
async def list_versions(name: str, request: Request, principal: Authenticated) -> Response:
    versions = await _criteria(request).versions(principal.project, name)
    return json_response(CriterionList(data=[c.to_wire() for c in versions]))


@router.post("/criteria/{name}/versions")
async def new_version(name: str, request: Request, principal: Authenticated) -> Response:
    body = await parse_body(request, NewCriterionVersionRequest)
    return json_response((await _criteria(request).new_version(principal.project, name, body)).to_wire())


@router.delete("/criteria/{name}")
async def delete_criterion(name: str, request: Request, principal: Authenticated) -> Response:
    return json_response(await _criteria(request).delete(principal.project, name))


@router.post("/criteria/{name}/alignment")
async def alignment(name: str, request: Request, principal: Authenticated) -> Response:
    body = await parse_body(request, AlignmentRequest)
    criterion = await _criteria(request).get(principal.project, name)
    return json_response(await align(_judge(request), criterion, body))
