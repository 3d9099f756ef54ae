"""Request and response models of the HTTP routes; /docs is generated from them.

``eir``: EIR's own ``/predict`` and ``/info`` payloads, kept exactly as EIR's eirserve has them.
``v2``: the Open Inference Protocol's messages.
"""
