"""A real ExApp for harp's ExApps tests: FastAPI with nc_py_api's AppAPIAuthMiddleware (the
AppAPI signature check every nc_py_api app runs), serving on a Unix socket as HaRP-mode
ExApps do (frpc publishes the socket).

  exapp.py SOCKET      env: APP_ID, APP_SECRET, APP_VERSION, NEXTCLOUD_URL

  GET  /headers  -> {"username": ..., "headers": {...}}   (after the signature check)
  WS   /ws       -> echoes every message
Prints "ready" when listening. Requests without valid AppAPI headers get 401 Unauthorized.
"""
import asyncio
import sys

import uvicorn
from fastapi import FastAPI, Request, WebSocket
from nc_py_api.ex_app import AppAPIAuthMiddleware

APP = FastAPI()
APP.add_middleware(AppAPIAuthMiddleware)


@APP.get("/headers")
async def headers(request: Request):
    return {"username": request.scope.get("username", ""), "headers": dict(request.headers)}


@APP.websocket("/ws")
async def ws(websocket: WebSocket):
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except Exception:
        pass


async def main(path):
    config = uvicorn.Config(APP, uds=path, log_level="warning", ws="websockets")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    await task


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
