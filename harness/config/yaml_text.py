"""YAML as the harness reads it from a user's files: safe (plain data only), UTF-8, each key once, and no alias that
expands to more than a config could mean (an alias bomb is refused while it is read, not after it has eaten the
memory and minutes of whatever walks it next)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode

from harness.errors import ConfigError

MAX_EXPANDED_NODES = 100_000  # what aliases may expand to in one file: far beyond any real config


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last silently) and
    aliases that expand to more than ``MAX_EXPANDED_NODES`` nodes."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self.expanded, self.sizes = 0, {}

    def compose_node(self, parent, index) -> Node:
        alias = self.check_event(AliasEvent)
        node = super().compose_node(parent, index)
        if alias:
            self.expanded += self._size(node)
            if self.expanded > MAX_EXPANDED_NODES:
                raise ComposerError(None, None, f"its aliases expand to more than {MAX_EXPANDED_NODES} values (an "
                                    "alias bomb?)", node.start_mark)
        return node

    def _size(self, node: Node) -> int:
        """How many nodes ``node`` stands for, its children's aliases expanded (each shared node counted once)."""
        if id(node) not in self.sizes:
            children = (node.value if isinstance(node, SequenceNode)
                        else [item for pair in node.value for item in pair] if isinstance(node, MappingNode) else [])
            self.sizes[id(node)] = 1 + sum(self._size(child) for child in children)
        return self.sizes[id(node)]

    def construct_mapping(self, node, deep=False):
        if isinstance(node, MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # merge keys (<<) may repeat
                    continue
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int, float, bool)):  # an unhashable key is the constructor's own error
                    continue
                if key in seen:
                    raise ConstructorError(None, None, f"the key {key!r} is given twice (which one is meant?)",
                                           key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """The data of a YAML file, or a ConfigError naming the file, the line and what is wrong."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.object[error.start]:#x} at offset {error.start}): "
                          "save it as UTF-8") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str) -> Any:
    """``text`` as YAML data; ``source`` names it in the ConfigError for what is wrong."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a config") from None
