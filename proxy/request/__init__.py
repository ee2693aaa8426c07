"""The stages of one call, one module each. In the order a call passes them:

edge           request id, the browser and peer gate, the audit record, the error answer
parse, routes  the entry points: X-AS-* headers, or `/r/NAME/...` (token_scan guards routes)
egress         the allowlist: which scheme, host and port, and which addresses dialled
authorise      who the caller is and which values it may have, asked of the broker
approval_wait  a call that needs a grant: refused with an id, or held until a human answers
inject         the request that goes upstream, with the values in place
relay          the answer back, through the redactor
pipeline       the stages above in order, after an entry point has parsed the call
"""
