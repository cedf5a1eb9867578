"""A small real backend for gateway tests: TF Serving's REST predict/status API, the Open Inference
Protocol's `infer` (JSON or binary tensors, as torch_service answers the gateway's binary wire) and,
optionally, TF Serving's gRPC Predict/GetModelStatus, with behaviour chosen by the input so tests can
provoke failures.

Output: `classes` = round(10 * pixel[0,0,0]) % 10, probabilities peaked on it (so answers are
checkable). Control pixel [0,1,0]: 0.25 -> invalid argument (400), 0.5 -> internal error (500),
0.75 -> answer after 2 s (timeouts). Every answer carries `X-Standin: <name>`.
"""

from __future__ import annotations

import argparse
import asyncio

import numpy as np
import orjson
import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import Response

from serving_core import oip
from serving_core.errors import ServingError
from serving_core.tfs_rest import parse_predict_body, predict_response


def model(images: np.ndarray) -> dict[str, np.ndarray]:
    classes = np.rint(images[:, 0, 0, 0] * 10).astype(np.int64) % 10
    probs = np.full((len(images), 10), 0.01, dtype=np.float32)
    probs[np.arange(len(images)), classes] = 0.91
    return {"probabilities": probs, "classes": classes}


def control(images: np.ndarray) -> float:
    return float(images[0, 0, 1, 0])


def rest_app(name: str, version: int) -> FastAPI:
    app = FastAPI()
    hdr = {"x-standin": name}

    def err(status: int, msg: str) -> Response:
        return Response(orjson.dumps({"error": msg}), status_code=status, media_type="application/json", headers=hdr)

    @app.get("/v1/models/{model_name}")
    async def status(model_name: str) -> Response:
        if model_name != "cnn":
            return err(404, f"Servable not found for request: Latest({model_name})")
        doc = {
            "model_version_status": [
                {"version": str(version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        }
        return Response(orjson.dumps(doc), media_type="application/json", headers=hdr)

    async def misbehave(images: np.ndarray) -> Response | None:
        """The failure the control pixel asks for (an error answer, or a 2 s delay and then None)."""
        c = control(images)
        if c == 0.25:
            return err(400, "standin rejects this input")
        if c == 0.5:
            return err(500, "standin internal failure")
        if c == 0.75:
            await asyncio.sleep(2.0)
        return None

    @app.post("/v1/models/{model_name}:predict")
    async def predict(model_name: str, request: Request) -> Response:
        if model_name != "cnn":
            return err(404, f"Servable not found for request: Latest({model_name})")
        try:
            req = parse_predict_body(await request.body())
        except ServingError as exc:
            return err(exc.http_status, "standin: " + exc.message)
        failure = await misbehave(req.images)
        if failure is not None:
            return failure
        return Response(predict_response(req.format, model(req.images)), media_type="application/json", headers=hdr)

    @app.post("/v2/models/{model_name}/infer")
    async def infer(model_name: str, request: Request) -> Response:
        if model_name != "cnn":
            return err(404, f"Servable not found for request: Latest({model_name})")
        try:
            req = oip.parse_infer_body(await request.body(), header_length=request.headers.get(oip.HEADER_LENGTH))
        except ServingError as exc:
            return err(exc.http_status, "standin: " + exc.message)
        failure = await misbehave(req.images)
        if failure is not None:
            return failure
        content, header_length = oip.infer_response(model_name, version, req, model(req.images))
        if header_length is not None:
            hdr_binary = {**hdr, oip.HEADER_LENGTH: str(header_length)}
            return Response(content, media_type=oip.BINARY_CONTENT_TYPE, headers=hdr_binary)
        return Response(content, media_type="application/json", headers=hdr)

    return app


async def grpc_server(port: int, version: int) -> object:
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, predict_pb2

    async def predict(request: object, context: grpc.aio.ServicerContext) -> object:
        if request.model_spec.name != "cnn":
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({request.model_spec.name})"
            )
        t = request.inputs["images"]
        shape = [d.size for d in t.tensor_shape.dim]
        images = np.frombuffer(t.tensor_content, dtype=np.float32).reshape(shape)
        c = control(images)
        if c == 0.25:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "standin rejects this input")
        if c == 0.5:
            await context.abort(grpc.StatusCode.INTERNAL, "standin internal failure")
        if c == 0.75:
            await asyncio.sleep(2.0)
        out = model(images)
        resp = predict_pb2.PredictResponse()
        resp.model_spec.name = "cnn"
        resp.model_spec.version.value = version
        resp.model_spec.signature_name = "serving_default"
        # Typed repeated fields, as TF Serving answers by default (not tensor_content).
        p = resp.outputs["probabilities"]
        p.dtype = 1
        p.tensor_shape.dim.add().size = len(images)
        p.tensor_shape.dim.add().size = 10
        p.float_val.extend(out["probabilities"].ravel().tolist())
        k = resp.outputs["classes"]
        k.dtype = 9
        k.tensor_shape.dim.add().size = len(images)
        k.int64_val.extend(out["classes"].tolist())
        return resp

    async def status(request: object, context: grpc.aio.ServicerContext) -> object:
        resp = get_model_status_pb2.GetModelStatusResponse()
        s = resp.model_version_status.add()
        s.version = version
        s.state = 30
        return resp

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "tensorflow.serving.PredictionService",
                {
                    "Predict": grpc.unary_unary_rpc_method_handler(
                        predict,
                        request_deserializer=predict_pb2.PredictRequest.FromString,
                        response_serializer=predict_pb2.PredictResponse.SerializeToString,
                    ),
                },
            ),
            grpc.method_handlers_generic_handler(
                "tensorflow.serving.ModelService",
                {
                    "GetModelStatus": grpc.unary_unary_rpc_method_handler(
                        status,
                        request_deserializer=get_model_status_pb2.GetModelStatusRequest.FromString,
                        response_serializer=get_model_status_pb2.GetModelStatusResponse.SerializeToString,
                    ),
                },
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rest-port", type=int, required=True)
    ap.add_argument("--grpc-port", type=int, default=0)
    ap.add_argument("--name", default="standin")
    ap.add_argument("--version", type=int, default=1)
    args = ap.parse_args()
    server = await grpc_server(args.grpc_port, args.version) if args.grpc_port else None
    config = uvicorn.Config(
        rest_app(args.name, args.version), host="127.0.0.1", port=args.rest_port, log_level="warning"
    )
    await uvicorn.Server(config).serve()
    if server is not None:
        await server.stop(0)  # type: ignore[attr-defined]


if __name__ == "__main__":
    asyncio.run(main())
