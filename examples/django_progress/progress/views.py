"""The story's app without Channels: a page, an upload view that publishes its progress to
wsgate over HTTP, and wsgate's on_connect hook.

The upload view is an ordinary (blocking) Django view: reading the spreadsheet here stalls no
WebSocket, because wsgate holds them. The uploaded file never leaves this process: only
progress text goes to the group (a file in a channel layer's group_send is what failed in the
story, with msgpack on Redis and past 2.5 MB in memory).
"""
import csv
import io
import json
import re
import secrets
import time

from django.conf import settings
from django.http import HttpResponseBadRequest, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from wsgate_client import Client, SignatureError, WsgateError, verify_signature

wsgate = Client(settings.WSGATE_API)
ROOM = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def index(request):
    room = request.GET.get("room", "123")
    if not ROOM.match(room):
        return HttpResponseBadRequest("room: 1 to 64 letters, digits, '-' or '_'")
    return render(request, "index.html", page(room, watch=""))


def page(room, watch):
    """The page's context: the room, where wsgate is, the id for the next classic upload and
    the upload whose progress this page shows (after a form POST: the one just made)."""
    return {
        "room": room,
        "ws_base": settings.WSGATE_WS,
        "next_upload": secrets.token_hex(8),
        "watch": watch,
    }


def rows_of(upload):
    """(header, rows) of an uploaded CSV or XLSX, read from wherever Django keeps the upload
    (memory below 2.5 MB, a temporary file above)."""
    name = upload.name.lower()
    if name.endswith(".xlsx"):
        import openpyxl

        book = openpyxl.load_workbook(upload, read_only=True, data_only=True)
        rows = [list(r) for r in book.active.iter_rows(values_only=True)]
        book.close()
    elif name.endswith(".csv"):
        text = io.TextIOWrapper(upload, encoding="utf-8-sig", newline="")
        rows = list(csv.reader(text))
    else:
        raise ValueError(f"{upload.name}: upload a .csv or .xlsx file")
    rows = [r for r in rows if any(c not in (None, "") for c in r)]
    if not rows:
        raise ValueError(f"{upload.name} has no rows")
    return rows[0], rows[1:]


def number(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0


@require_POST
def upload(request):
    room = request.POST.get("room", "123")
    upload_id = request.POST.get("upload_id") or secrets.token_hex(8)
    by_fetch = request.headers.get("X-Requested-With") == "fetch"
    if not ROOM.match(room):
        return HttpResponseBadRequest("room: 1 to 64 letters, digits, '-' or '_'")
    f = request.FILES.get("file")
    if f is None:
        return HttpResponseBadRequest("choose a .csv or .xlsx file to upload")
    group = f"room:{room}"

    def say(line, done=False):
        wsgate.publish(group, {"upload": upload_id, "line": line, "done": done})

    try:
        say("正在打开数据...")
        _, rows = rows_of(f)
        total = 0.0
        for i, row in enumerate(rows, 1):
            time.sleep(settings.PROGRESS_DELAY)  # the real work would be here
            amount = number(row[1] if len(row) > 1 else None)
            total += amount
            say(f"row {i}/{len(rows)}: {row[0]} ({amount:g})")
        summary = f"完成: {len(rows)} rows, total {total:g}"
        say(summary, done=True)
    except WsgateError as e:
        # Progress could not be shown; say so instead of pretending it was.
        return JsonResponse({"error": str(e)}, status=502)
    except ValueError as e:
        return HttpResponseBadRequest(str(e))
    if by_fetch:
        return JsonResponse({"upload": upload_id, "rows": len(rows), "summary": summary})
    # The classic form POST: this response replaces the page. The new page's socket joins
    # after everything above was published; wsgate replays it (the room's replay setting).
    return render(request, "index.html", page(room, watch=upload_id))


@csrf_exempt
@require_POST
def ws_connect(request):
    """wsgate's on_connect hook: a signed JSON POST for each WebSocket that connects."""
    try:
        verify_signature(
            settings.WSGATE_HOOK_SECRET,
            request.headers.get("Wsgate-Signature"),
            request.body,
        )
    except SignatureError as e:
        return JsonResponse({"error": str(e)}, status=403)
    knock = json.loads(request.body)
    room = knock["params"].get("room", "")
    if not ROOM.match(room):
        return JsonResponse({"accept": False, "status": 400, "reason": "no such room"})
    return JsonResponse(
        {
            "accept": True,
            "groups": [f"room:{room}"],
            "info": {"agent": knock["headers"].get("user-agent", "")[:60]},
        }
    )
