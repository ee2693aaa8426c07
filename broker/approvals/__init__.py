"""Approvals: approvers and their codes, grants, tier floors and calls waiting for a human.

model.py is the typed state and its one decode/encode; store.py the sealed file; codes.py
and totp.py an approver's code; pending.py calls waiting; core.py, approvers.py and
service.py the `Approvals` object the broker serves; ops.py its socket ops.
"""
