"""moto's S3 server, its CompleteMultipartUpload reply named as S3 names it.

Run as ``python -m tests.support.moto_s3 -H HOST -p PORT`` (the arguments of ``moto.server``).

S3 answers CompleteMultipartUpload with a ``<CompleteMultipartUploadResult>`` document (the AWS
API reference, CompleteMultipartUpload, "Response Syntax"); moto 5.2's generic serializer names
it ``<CompleteMultipartUploadResponse>``. pyarrow (its S3 filesystem reads a 200 OK reply whose
root is not ``CompleteMultipartUploadResult`` as an error embedded in the body, as S3 may send
one) then fails every multipart upload. The real API wins: the reply is renamed here, so the
archive's multipart uploads (files over the 10 MB part size) are tested against moto too.
"""

from __future__ import annotations

import sys
from typing import Any

from moto import server
from moto.s3 import responses

_WRONG, _RIGHT = "CompleteMultipartUploadResponse", "CompleteMultipartUploadResult"
_serialized = responses.S3Response.serialized


def _as_s3_names_it(self: responses.S3Response, result: Any) -> Any:
    status, headers, body = _serialized(self, result)
    if self.data.get("Action") == "CompleteMultipartUpload":
        if isinstance(body, bytes):
            body = body.replace(_WRONG.encode(), _RIGHT.encode())
        elif isinstance(body, str):
            body = body.replace(_WRONG, _RIGHT)
        headers.pop("Content-Length", None)
        headers.pop("content-length", None)
    return status, headers, body


if __name__ == "__main__":
    responses.S3Response.serialized = _as_s3_names_it  # type: ignore[method-assign]
    server.main(sys.argv[1:])
