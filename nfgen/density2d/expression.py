"""A user's energy ``U(z1, z2)`` written as a formula, compiled without ``eval``.

The text is parsed by Python's ``ast`` into a tree, and only arithmetic on the names ``z1``,
``z2``, ``pi`` and ``e``, number constants and the functions in ``FUNCTIONS`` is accepted; the
tree is then turned into nested torch closures. Nothing in the text can reach an attribute, a
builtin, an import or any other Python object: an unknown node is an error naming it.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from nfgen.core.user_input import parser

MAX_LENGTH = 1000  # characters: a formula, not a program
MAX_NODES = 400

Fn = Callable[[Tensor, Tensor], Tensor]  # (z1, z2) -> values, both [N]

FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "exp": torch.exp, "log": torch.log, "log1p": torch.log1p, "expm1": torch.expm1, "sqrt": torch.sqrt,
    "sin": torch.sin, "cos": torch.cos, "tan": torch.tan, "tanh": torch.tanh, "abs": torch.abs,
    "sigmoid": torch.sigmoid, "softplus": F.softplus, "relu": torch.relu,
    "atan2": torch.atan2, "min": torch.minimum, "max": torch.maximum, "logaddexp": torch.logaddexp,
}
CONSTANTS = {"pi": math.pi, "e": math.e}
VARIABLES = ("z1", "z2")
_BINARY = {ast.Add: torch.add, ast.Sub: torch.sub, ast.Mult: torch.mul, ast.Div: torch.div, ast.Pow: torch.pow}


class ExpressionError(ValueError):
    """An expression that is not a formula of the allowed form (the message says which part)."""


def _compile(node: ast.AST) -> Fn:
    if isinstance(node, ast.Expression):
        return _compile(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        try:
            value = float(node.value)  # an integer of 309 digits or more overflows
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise ExpressionError(f"the number {_short(ast.unparse(node))} is too large for a float64; rescale the formula")
        return lambda z1, z2: torch.full_like(z1, value)
    if isinstance(node, ast.Name):
        if node.id == "z1":
            return lambda z1, z2: z1
        if node.id == "z2":
            return lambda z1, z2: z2
        if node.id in CONSTANTS:
            value = CONSTANTS[node.id]
            return lambda z1, z2: torch.full_like(z1, value)
        raise ExpressionError(f"unknown name {node.id!r}; use z1, z2, pi, e")
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        op, left, right = _BINARY[type(node.op)], _compile(node.left), _compile(node.right)
        return lambda z1, z2: op(left(z1, z2), right(z1, z2))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _compile(node.operand)
        return (lambda z1, z2: -inner(z1, z2)) if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in FUNCTIONS:
            raise ExpressionError(f"unknown function {ast.unparse(node.func)!r}; allowed: {', '.join(FUNCTIONS)}")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise ExpressionError(f"{name}() takes plain positional arguments")
        fn, args = FUNCTIONS[name], [_compile(a) for a in node.args]
        expected = 2 if name in ("atan2", "min", "max", "logaddexp") else 1
        if len(args) != expected:
            raise ExpressionError(f"{name}() takes {expected} argument(s), got {len(args)}")
        return lambda z1, z2: fn(*(a(z1, z2) for a in args))
    raise ExpressionError(f"{ast.unparse(node)!r} is not allowed: use numbers, z1, z2, pi, e, + - * / ** and "
                          f"the functions {', '.join(FUNCTIONS)}")


def _short(text: str) -> str:
    return text if len(text) <= 20 else f"{text[:8]}...{text[-4:]} ({len(text)} characters)"


@parser("target.expression")
def compile_energy(text: str) -> Callable[[Tensor], Tensor]:
    """``U`` as a function of points ``[N, 2]`` -> ``[N]``; an ``ExpressionError`` if the text is
    not such a formula."""
    if not text.strip():
        raise ExpressionError("the expression is empty; write U(z1, z2), e.g. 0.5*((sqrt(z1**2+z2**2)-2)/0.4)**2")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"the expression has {len(text)} characters; at most {MAX_LENGTH}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError) as e:
        raise ExpressionError(f"not a formula ({getattr(e, 'msg', e)})") from None
    except RecursionError:
        raise ExpressionError("the expression is nested too deeply") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ExpressionError(f"the expression has more than {MAX_NODES} parts; simplify it")
    fn = _compile(tree)
    return lambda x: fn(x[:, 0], x[:, 1])
