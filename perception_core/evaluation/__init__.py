"""Evaluation: COCO AP, calibration, video AP and tracking metrics, and the commands using them.

    detections.py          ImageDetections (one image's scores, category ids, boxes, masks) <-> COCO results
    coco_eval.py           COCO box/mask AP via pycocotools; per-category and subset AP
    calibration.py         ECE of confidence against IoU with the matched ground truth (Eq. 4); reliability plot
    predict.py             run a torch or ONNX model over a COCO json -> ImageDetections
    eval_command.py        `mobius eval`
    video_ap.py            YouTube-VIS video AP (spatio-temporal mask IoU, COCO-style 101-point AP)
    tracking_metrics.py    HOTA, DetA, AssA, IDF1, ID switches via trackeval
    video_eval.py          YouTube-VIS ground truth + results json -> video AP and tracking metrics
    eval_video_command.py  `mobius eval-video`
    record.py              --record: the numbers into the shipped model's model.json (model card)

Modules import their heavy dependencies (torch, trackeval, matplotlib) only where needed.
"""
