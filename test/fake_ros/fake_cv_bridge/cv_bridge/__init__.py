"""Fake cv_bridge with CvBridge's conversion semantics for the encodings the node accepts
(an independent implementation: row padding via reshape + slice, JPEG/PNG via cv2.imdecode)."""

from __future__ import annotations

import cv2
import numpy as np

CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


class CvBridgeError(TypeError):
    pass


class CvBridge:
    def imgmsg_to_cv2(self, img_msg, desired_encoding="passthrough"):
        if desired_encoding != "passthrough":
            raise CvBridgeError("fake cv_bridge: only passthrough")
        if img_msg.encoding not in CHANNELS:
            raise CvBridgeError(f"Unrecognized image encoding [{img_msg.encoding}]")
        c = CHANNELS[img_msg.encoding]
        buf = np.frombuffer(bytes(img_msg.data), dtype=np.uint8)
        if buf.size < img_msg.step * img_msg.height:
            raise CvBridgeError("buffer is smaller than height * step")
        rows = buf[: img_msg.step * img_msg.height].reshape(img_msg.height, img_msg.step)
        image = rows[:, : img_msg.width * c].reshape(img_msg.height, img_msg.width, c)
        return image[:, :, 0] if c == 1 else image

    def compressed_imgmsg_to_cv2(self, cmprs_img_msg, desired_encoding="passthrough"):
        image = cv2.imdecode(np.frombuffer(bytes(cmprs_img_msg.data), np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise CvBridgeError("could not decode compressed image")
        return image
