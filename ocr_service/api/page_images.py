"""Page images and figure crops of a task, for clients that draw the blocks' boxes.

`GET /ocr/{task_id}/pages/{page}/image` is the page as the engine saw it (the blocks'
`bbox` are in its pixels; PNG for flat pages, JPEG for photos and scans).
`GET /ocr/{task_id}/images/page-{page}-{image}.png` is the page's `image`-th image
region: the Markdown's `![](images/page-P-N.png)` links resolve against
`/ocr/{task_id}/`. Both never change, so they may be cached; both answer 410 once the
task's document is no longer kept (OCR_KEEP_DOCUMENTS_MB) and 404 for a page or image
the task does not have.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from ocr_service.api.events import OwnedTask
from ocr_service.api.models import errors
from ocr_service.api.state import Running
from ocr_service.output.page_images import EncodedImage

router = APIRouter(responses=errors(401, 404, 410, 422, 429))

# Private: with API keys on, a shared cache must not hand one key's task to another.
CACHE_CONTROL = "private, max-age=86400, immutable"
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg"}


@router.get(
    "/ocr/{task_id}/pages/{page}/image",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}}, "description": "The page image"}},
)
async def page_image(task: OwnedTask, page: Annotated[int, Path(ge=1)], service: Running) -> Response:
    """The page (1-based) as the engine saw it: the blocks' boxes are in its pixels."""
    image = await service.page_images.page(task, page)
    return image_response(image, f"page-{page}")


@router.get(
    "/ocr/{task_id}/images/page-{page}-{image}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "The image region, cropped from the page"}},
)
async def figure_image(
    task: OwnedTask, page: Annotated[int, Path(ge=1)], image: Annotated[int, Path(ge=1)], service: Running
) -> Response:
    """The `image`-th image region of a page, which the Markdown links as `images/page-{page}-{image}.png`."""
    crop = await service.page_images.figure(task, page, image)
    return image_response(crop, f"page-{page}-{image}")


def image_response(image: EncodedImage, name: str) -> Response:
    return Response(
        image.data,
        media_type=image.media_type,
        headers={
            "Cache-Control": CACHE_CONTROL,
            "Vary": "X-API-Key, Authorization",
            "Content-Disposition": f'inline; filename="{name}.{_EXTENSIONS[image.media_type]}"',
        },
    )
