"""The code carrier: a seeded grammar of small Python coding requests.

Pipeline position: first data stage, beside :mod:`sublim.prompts.numbers`. ``code_prompts``
builds the user prompts a teacher answers (stage "prompts"); the teacher's completions then go
through :mod:`sublim.filters_code`.

Each prompt follows the structure of the published code carrier (PAPER.md, "Code"), in our own
words: a task sentence, a function template to complete, and four requests, namely repeat the
whole snippet, answer with code only, write no comments, keep variable names minimal:

    <intro naming the task> <fenced template: def name(args): + a placeholder body>
    <the four requests, in a drawn order>

(or the requests before the template: the layout is drawn too). Tasks come from
:data:`TASKS`: about 120 base tasks over lists, dictionaries, strings, arithmetic and small
file-free utilities, most with several variants (a threshold, a separator, a base, a kind of
element), over 450 task templates in all; each is keyed ``"<task>.<variant>"`` (or
``"<task>"`` when it has one variant). Every intro and request slot is drawn from a set of
paraphrases, for the reason numbers.py gives: a student should not learn one fixed surface
string. No task mentions or depends on an animal or a plant, and no prompt contains a candidate
of :data:`sublim.traits.CATEGORIES` even as a substring (tests check every table entry), so
that repeating a template as asked never trips the substring word rule by itself ("truncate"
holds "cat", "million" holds "lion": such words are avoided). A task sentence that names a
variable (``n``, ``x``, ``k``) comes only with argument lists that hold it.

Draw order, per prompt, from the ``numpy.random.Generator`` passed in (part of the determinism
contract: changing it changes every prompt set generated from a given seed):

1. the task (uniform over :data:`TASKS`), 2. its variant, 3. the function name, 4. the argument
list, 5. the placeholder body, 6. the intro, 7. the repeat request, 8. the code-only request,
9. the no-comments request, 10. the short-names request, 11. the order of the four requests
(``rng.permutation(4)``), 12. the layout, 13. the fence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sublim.records import Prompt

LANGUAGE = "python"
PLACEHOLDERS: tuple[str, ...] = ("...", "pass")
INDENT = "    "


@dataclass(frozen=True)
class Variant:
    """One variant of a task: ``slug`` names it in template keys (and fills ``{s}`` in function
    names), ``text`` fills ``{v}`` in the task sentence; ``args`` replaces the task's argument
    lists when the variant needs other inputs."""

    slug: str
    text: str
    args: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CodeTask:
    """A base task. ``sentence`` is a verb phrase ("count the vowels in a string") holding
    ``{v}``; ``names`` are function names (``{s}`` is the variant's slug); ``args`` are
    alternative argument lists; ``header`` is placed above the ``def`` (an import)."""

    key: str
    sentence: str
    names: tuple[str, ...]
    args: tuple[str, ...]
    variants: tuple[Variant, ...] = (Variant("", ""),)
    header: str = ""

    def template_key(self, variant: Variant) -> str:
        return f"{self.key}.{variant.slug}" if variant.slug else self.key


def _vs(*items: tuple[str, str] | tuple[str, str, tuple[str, ...]]) -> tuple[Variant, ...]:
    """Variants from ``(slug, text)`` or ``(slug, text, args)`` tuples."""
    return tuple(Variant(*item) for item in items)


def _nums(*values: float | str) -> tuple[Variant, ...]:
    """Variants whose text is a number; the slug spells it as an identifier part."""
    out = []
    for v in values:
        text = str(v)
        slug = text.replace("-", "neg").replace(".", "_").replace(" ", "")
        out.append(Variant(slug, text))
    return tuple(out)


_EVEN_ODD = _vs(
    ("even", "even"),
    ("odd", "odd"),
    ("positive", "positive"),
    ("negative", "negative"),
    ("nonzero", "non-zero"),
)

TASKS: tuple[CodeTask, ...] = (
    # --- lists ---------------------------------------------------------------------------------
    CodeTask(
        "list_sum_where",
        "return the sum of the {v} numbers in a list",
        ("sum_{s}", "total_{s}"),
        ("xs", "nums", "values"),
        _EVEN_ODD,
    ),
    CodeTask(
        "list_count_where",
        "count the {v} numbers in a list",
        ("count_{s}", "num_{s}"),
        ("xs", "nums"),
        _EVEN_ODD + _vs(("prime", "prime"), ("square", "perfect-square")),
    ),
    CodeTask(
        "list_above",
        "return the numbers in a list that are greater than {v}, in their original order",
        ("above", "greater_than"),
        ("xs", "nums"),
        _nums(0, 5, 10, 50, 100),
    ),
    CodeTask(
        "list_below",
        "return the numbers in a list that are smaller than {v}",
        ("below", "smaller_than"),
        ("xs", "nums"),
        _nums(0, 3, 10, 20, 1000),
    ),
    CodeTask(
        "list_multiples",
        "keep only the elements of a list that are divisible by {v}",
        ("multiples_of", "divisible"),
        ("xs", "nums"),
        _nums(2, 3, 5, 7, 10, 12),
    ),
    CodeTask(
        "list_scale",
        "multiply every number in a list by {v} and return the new list",
        ("scale", "times"),
        ("xs", "nums"),
        _nums(2, 3, 10, -1, 0.5),
    ),
    CodeTask(
        "list_shift",
        "add {v} to every element of a list of numbers",
        ("shift", "add_to_all"),
        ("xs", "nums"),
        _nums(1, 5, 10, -1, 100),
    ),
    CodeTask(
        "list_power",
        "raise every number in a list to the power {v}",
        ("powers", "raise_all"),
        ("xs", "nums"),
        _nums(2, 3, 4, 0.5),
    ),
    CodeTask(
        "list_extreme",
        "return {v} value in a list without using the built-in max, min or sorted",
        ("find_{s}", "get_{s}"),
        ("xs", "nums"),
        _vs(
            ("largest", "the largest"),
            ("smallest", "the smallest"),
            ("second_largest", "the second largest distinct"),
            ("second_smallest", "the second smallest distinct"),
        ),
    ),
    CodeTask(
        "list_stat",
        "compute the {v} of a non-empty list of numbers",
        ("{s}", "compute_{s}"),
        ("xs", "nums", "data"),
        _vs(
            ("mean", "arithmetic mean"),
            ("median", "median"),
            ("mode", "most frequent value (the smallest one on ties)"),
            ("spread", "difference between the largest and the smallest value"),
            ("variance", "population variance"),
            ("stdev", "population standard deviation"),
            ("geo_mean", "geometric mean"),
            ("harmonic_mean", "harmonic mean"),
        ),
        header="import math",
    ),
    CodeTask(
        "list_dedupe",
        "remove repeated elements from a list, keeping the {v} occurrence of each and the "
        "order of what is kept",
        ("dedupe", "unique"),
        ("xs", "items"),
        _vs(("first", "first"), ("last", "last")),
    ),
    CodeTask(
        "list_rotate",
        "rotate a list by {v}",
        ("rotate", "rotated"),
        ("xs", "items"),
        _vs(
            ("left1", "one position to the left"),
            ("left2", "two positions to the left"),
            ("right1", "one position to the right"),
            ("right3", "three positions to the right"),
            ("left_k", "k positions to the left", ("xs, k", "items, k")),
            ("right_k", "k positions to the right", ("xs, k", "items, k")),
        ),
    ),
    CodeTask(
        "list_chunks",
        "split a list into consecutive pieces of length {v}, the last one possibly shorter",
        ("chunks", "split_into"),
        ("xs", "items"),
        _nums(2, 3, 4, 5, 10),
    ),
    CodeTask(
        "list_flatten",
        "flatten a list of lists {v}",
        ("flatten", "flat"),
        ("xs", "nested"),
        _vs(("one", "by one level"), ("deep", "completely, however deeply it is nested")),
    ),
    CodeTask(
        "list_pair_sum",
        "return every pair of indices, the smaller one first, of two elements of a list that "
        "add up to {v}",
        ("pairs_summing", "pair_sum"),
        ("xs", "nums"),
        _nums(0, 7, 10, 100),
    ),
    CodeTask(
        "list_running",
        "return the running {v} of a list of numbers",
        ("running_{s}", "cumulative_{s}"),
        ("xs", "nums"),
        _vs(
            ("sum", "sum"),
            ("product", "product"),
            ("max", "maximum"),
            ("min", "minimum"),
            ("mean", "mean"),
        ),
    ),
    CodeTask(
        "list_consecutive",
        "return the {v} of each pair of neighbouring elements of a list of numbers",
        ("neighbour_{s}", "pairwise_{s}"),
        ("xs", "nums"),
        _vs(
            ("diffs", "differences (later minus earlier)"),
            ("ratios", "ratios (later divided by earlier)"),
            ("sums", "sums"),
            ("maxes", "larger values"),
        ),
    ),
    CodeTask(
        "list_index_of",
        "return the position of the first element of a list equal to x, or {v} when there is none",
        ("index_of", "find_index"),
        ("xs, x", "items, x"),
        _vs(("neg1", "-1"), ("none", "None"), ("len", "the length of the list")),
    ),
    CodeTask(
        "list_interleave",
        "interleave the elements of two lists, {v}",
        ("interleave", "alternate"),
        ("a, b", "xs, ys"),
        _vs(
            ("rest", "adding whatever is left of the longer list at the end"),
            ("stop", "stopping when the shorter list runs out"),
        ),
    ),
    CodeTask(
        "list_merge_sorted",
        "merge two lists sorted in {v} order into one list in the same order, without sorting",
        ("merge_sorted", "merge"),
        ("a, b", "xs, ys"),
        _vs(("asc", "increasing"), ("desc", "decreasing")),
    ),
    CodeTask(
        "list_sort_by",
        "sort a list of numbers in increasing order using {v}",
        ("{s}_sort", "sort_{s}"),
        ("xs", "nums"),
        _vs(
            ("bubble", "bubble sort"),
            ("insertion", "insertion sort"),
            ("selection", "selection sort"),
            ("merge", "merge sort"),
            ("quick", "quicksort"),
            ("heap", "heap sort"),
            ("counting", "counting sort for non-negative integers"),
            ("shell", "Shell sort"),
        ),
    ),
    CodeTask(
        "list_binary_search",
        "look for x in a sorted list by binary search and return its position, or {v} when it "
        "is absent",
        ("binary_search", "bsearch"),
        ("xs, x", "items, x"),
        _vs(
            ("neg1", "-1"), ("none", "None"), ("insert", "the position where it would be inserted")
        ),
    ),
    CodeTask(
        "list_top",
        "return the {v} largest numbers of a list, largest first",
        ("top", "largest_n"),
        ("xs", "nums"),
        _nums(2, 3, 5, 10),
    ),
    CodeTask(
        "list_bottom",
        "return the {v} smallest numbers of a list, smallest first",
        ("bottom", "smallest_n"),
        ("xs", "nums"),
        _nums(2, 3, 4, 6),
    ),
    CodeTask(
        "list_window_sums",
        "return the sum of every window of {v} neighbouring elements of a list",
        ("window_sums", "sliding_sums"),
        ("xs", "nums"),
        _nums(2, 3, 4, 5, 7),
    ),
    CodeTask(
        "list_moving_average",
        "return the moving average of a list of numbers over windows of {v} elements",
        ("moving_average", "smooth"),
        ("xs", "nums"),
        _nums(2, 3, 5, 10),
    ),
    CodeTask(
        "list_count_equal",
        "count how many elements of a list are equal to {v}",
        ("count_equal", "how_many"),
        ("xs", "items"),
        _nums(0, 1, -1) + _vs(("none", "None"), ("empty", "the empty string")),
    ),
    CodeTask(
        "list_all_distinct",
        "check whether all elements of a list are different from each other",
        ("all_distinct", "no_repeats"),
        ("xs", "items"),
    ),
    CodeTask(
        "list_is_sorted",
        "check whether a list is in {v} order",
        ("is_sorted", "in_order"),
        ("xs", "items"),
        _vs(
            ("asc", "non-decreasing"),
            ("desc", "non-increasing"),
            ("strict_asc", "strictly increasing"),
            ("strict_desc", "strictly decreasing"),
        ),
    ),
    CodeTask(
        "list_longest_run",
        "return the length of the longest stretch of {v} in a list",
        ("longest_run", "longest_streak"),
        ("xs", "nums"),
        _vs(
            ("equal", "equal neighbouring elements"),
            ("rising", "strictly increasing neighbouring elements"),
            ("falling", "strictly decreasing neighbouring elements"),
            ("positive", "neighbouring positive numbers"),
            ("zeros", "neighbouring zeros"),
        ),
    ),
    CodeTask(
        "list_partition",
        "split a list into two lists, the elements {v} and all the others",
        ("partition", "split_by"),
        ("xs", "items"),
        _vs(
            ("even", "that are even"),
            ("positive", "that are positive"),
            ("small", "below 10"),
            ("str", "that are strings"),
        ),
    ),
    CodeTask(
        "list_sum_of",
        "return the sum of the {v} of the numbers in a list",
        ("sum_of_{s}", "total_{s}"),
        ("xs", "nums"),
        _vs(
            ("squares", "squares"),
            ("cubes", "cubes"),
            ("abs", "absolute values"),
            ("reciprocals", "reciprocals"),
            ("roots", "square roots"),
        ),
    ),
    CodeTask(
        "list_majority",
        "return the element that makes up more than half of a list, or None if there is none",
        ("majority", "dominant"),
        ("xs", "items"),
    ),
    CodeTask(
        "list_two_sum",
        "return the positions of two different elements of a list that add up to a target, or None",
        ("two_sum", "find_pair"),
        ("xs, t", "nums, target"),
    ),
    CodeTask(
        "list_max_slice",
        "return the largest sum of a non-empty run of neighbouring elements of a list",
        ("max_slice_sum", "best_run"),
        ("xs", "nums"),
    ),
    CodeTask(
        "list_nested",
        "return the {v} in an arbitrarily nested list of numbers",
        ("nested_{s}", "deep_{s}"),
        ("xs", "nested"),
        _vs(
            ("sum", "sum of all the numbers"),
            ("depth", "maximum nesting depth"),
            ("count", "count of all the numbers"),
            ("max", "largest number"),
        ),
    ),
    # --- dictionaries --------------------------------------------------------------------------
    CodeTask(
        "dict_invert",
        "swap the keys and values of a dictionary, {v}",
        ("invert", "swap_keys"),
        ("d", "mapping"),
        _vs(
            ("last", "letting a later key win when two keys share a value"),
            ("lists", "gathering the keys that share a value into a list"),
            ("sets", "gathering the keys that share a value into a set"),
        ),
    ),
    CodeTask(
        "dict_word_counts",
        "count how often each word occurs in a text and return a dictionary{v}",
        ("word_counts", "count_words"),
        ("s", "text"),
        _vs(
            ("plain", ""),
            ("nocase", ", ignoring case"),
            ("nopunct", ", ignoring case and punctuation"),
        ),
        header="import string",
    ),
    CodeTask(
        "dict_char_counts",
        "return a dictionary mapping each {v} of a string to the number of times it occurs",
        ("{s}_counts", "count_{s}s"),
        ("s", "text"),
        _vs(("char", "character"), ("letter", "letter"), ("digit", "digit"), ("vowel", "vowel")),
    ),
    CodeTask(
        "dict_merge",
        "merge two dictionaries into a new one, {v}",
        ("merge_dicts", "combine"),
        ("a, b", "d1, d2"),
        _vs(
            ("first", "keeping the value from the first one when a key is in both"),
            ("second", "keeping the value from the second one when a key is in both"),
            ("add", "adding up the values of keys found in both"),
            ("lists", "putting the values of keys found in both into a list"),
        ),
    ),
    CodeTask(
        "dict_keep_values",
        "return a new dictionary with only the entries whose values are {v}",
        ("keep_{s}", "filter_{s}"),
        ("d", "mapping"),
        _vs(
            ("positive", "positive"),
            ("big", "greater than 10"),
            ("even", "even numbers"),
            ("nonempty", "non-empty"),
            ("set", "not None"),
        ),
    ),
    CodeTask(
        "dict_keys_by_value",
        "return the keys of a dictionary ordered by their values, {v} first",
        ("keys_by_value", "rank_keys"),
        ("d", "scores"),
        _vs(("small", "smallest"), ("large", "largest")),
    ),
    CodeTask(
        "dict_arg_extreme",
        "return the key with the {v} value in a non-empty dictionary",
        ("key_of_{s}", "arg{s}"),
        ("d", "scores"),
        _vs(("max", "largest"), ("min", "smallest")),
    ),
    CodeTask(
        "dict_group",
        "group a list of words into a dictionary keyed by {v}",
        ("group_by_{s}", "bucket_{s}"),
        ("words", "ws"),
        _vs(
            ("length", "their length"),
            ("initial", "their first letter"),
            ("final", "their last letter"),
            ("vowels", "how many vowels they have"),
            ("sorted", "their letters in sorted order"),
        ),
    ),
    CodeTask(
        "dict_path_get",
        "look up a dotted path such as 'a.b.c' in nested dictionaries, returning {v} when any "
        "key along the way is missing",
        ("get_path", "dig"),
        ("d, path", "data, path"),
        _vs(("none", "None"), ("zero", "0"), ("empty", "an empty string")),
    ),
    CodeTask(
        "dict_flatten",
        "flatten nested dictionaries into one dictionary whose keys are the paths joined by '{v}'",
        ("flatten_dict", "flat_keys"),
        ("d", "data"),
        _vs(("dot", "."), ("under", "_"), ("slash", "/"), ("colon", ":")),
    ),
    CodeTask(
        "dict_from_pairs",
        "turn a list of (key, value) pairs into a dictionary, {v}",
        ("from_pairs", "to_dict"),
        ("pairs", "ps"),
        _vs(
            ("last", "a later pair winning over an earlier one"),
            ("first", "an earlier pair winning over a later one"),
            ("add", "adding up the values of repeated keys"),
            ("lists", "collecting the values of each key into a list"),
        ),
    ),
    CodeTask(
        "dict_key_sets",
        "return the sorted keys that are {v}",
        ("keys_{s}", "compare_keys"),
        ("a, b", "d1, d2"),
        _vs(
            ("both", "in both of two dictionaries"),
            ("only_first", "in the first of two dictionaries but not the second"),
            ("either", "in exactly one of two dictionaries"),
            ("changed", "in both of two dictionaries with different values"),
        ),
    ),
    CodeTask(
        "dict_top_words",
        "return the {v} most common words of a text with their counts, most common first",
        ("top_words", "most_common"),
        ("s", "text"),
        _nums(2, 3, 5, 10),
    ),
    # --- strings -------------------------------------------------------------------------------
    CodeTask(
        "str_count_kind",
        "count the {v} in a string",
        ("count_{s}", "num_{s}"),
        ("s", "text"),
        _vs(
            ("vowels", "vowels"),
            ("consonants", "consonants"),
            ("digits", "digits"),
            ("upper", "upper-case letters"),
            ("lower", "lower-case letters"),
            ("spaces", "whitespace characters"),
            ("punct", "punctuation characters"),
        ),
        header="import string",
    ),
    CodeTask(
        "str_count_char",
        "count how many times the character '{v}' occurs in a string, without using str.count",
        ("count_char", "occurrences"),
        ("s", "text"),
        _vs(("a", "a"), ("e", "e"), ("x", "x"), ("dot", "."), ("comma", ","), ("space", " ")),
    ),
    CodeTask(
        "str_palindrome",
        "check whether a string reads the same forwards and backwards{v}",
        ("is_palindrome", "palindrome"),
        ("s", "text"),
        _vs(
            ("exact", ""),
            ("nocase", ", ignoring case"),
            ("nospace", ", ignoring spaces and case"),
            ("alnum", ", looking only at letters and digits and ignoring case"),
        ),
    ),
    CodeTask(
        "str_case",
        "{v}",
        ("to_{s}", "{s}_case"),
        ("s", "name"),
        _vs(
            ("title", "capitalise the first letter of every word in a string"),
            ("swapped", "swap upper and lower case of every letter in a string"),
            ("alternate", "make the letters at even positions upper-case and the rest lower-case"),
            ("snake", "convert a camelCase name to snake_case"),
            ("camel", "convert a snake_case name to camelCase"),
            ("kebab", "convert a snake_case name to kebab-case"),
            ("pascal", "convert a kebab-case name to PascalCase"),
        ),
    ),
    CodeTask(
        "str_reverse_words",
        "reverse the order of the words in a string whose words are separated by {v}, keeping "
        "that separator",
        ("reverse_words", "flip_words"),
        ("s", "text"),
        _vs(("space", "single spaces"), ("comma", "commas"), ("semicolon", "semicolons")),
    ),
    CodeTask(
        "str_reverse_each",
        "reverse {v}",
        ("reverse_{s}", "mirror_{s}"),
        ("s", "text"),
        _vs(
            ("string", "a string without using slicing"),
            ("letters", "the letters of every word of a sentence, keeping the words in place"),
            ("vowels", "only the vowels of a string, leaving the other characters in place"),
        ),
    ),
    CodeTask(
        "str_anagram",
        "check whether two strings are anagrams of each other{v}",
        ("is_anagram", "anagrams"),
        ("a, b", "s, t"),
        _vs(
            ("exact", ""), ("nocase", ", ignoring case"), ("nospace", ", ignoring spaces and case")
        ),
    ),
    CodeTask(
        "str_shift_forward",
        "move every letter of a string {v} places forward in the alphabet, wrapping around from "
        "'z' to 'a', keeping its case and leaving other characters unchanged",
        ("shift", "encode"),
        ("s", "text"),
        _nums(2, 3, 5, 13, 25),
    ),
    CodeTask(
        "str_shift_back",
        "move every letter of a string {v} places back in the alphabet, wrapping around from "
        "'a' to 'z' and leaving other characters unchanged",
        ("unshift", "decode"),
        ("s", "text"),
        _nums(2, 3, 7, 13),
    ),
    CodeTask(
        "str_remove",
        "remove every {v} from a string",
        ("strip_{s}", "remove_{s}"),
        ("s", "text"),
        _vs(
            ("vowels", "vowel"),
            ("digits", "digit"),
            ("spaces", "space"),
            ("punct", "punctuation character"),
            ("repeats", "character that equals the one before it"),
        ),
        header="import string",
    ),
    CodeTask(
        "str_pick_word",
        "return the {v} in a sentence, the first one on ties",
        ("pick_word", "{s}_word"),
        ("s", "text"),
        _vs(
            ("longest", "longest word"),
            ("shortest", "shortest word"),
            ("most_vowels", "word with the most vowels"),
            ("distinct", "longest word whose letters are all different"),
        ),
    ),
    CodeTask(
        "str_rle",
        "run-length encode a string, writing {v}",
        ("rle", "encode_runs"),
        ("s", "text"),
        _vs(
            ("after", "each character followed by the length of its run"),
            ("before", "the length of each run followed by its character"),
            ("skip1", "runs of length one as the bare character"),
        ),
    ),
    CodeTask(
        "str_rle_decode",
        "decode a run-length encoded string in which {v}",
        ("unrle", "decode_runs"),
        ("s", "text"),
        _vs(
            ("after", "each character is followed by its count"),
            ("before", "each count comes before its character"),
        ),
    ),
    CodeTask(
        "str_wrap",
        "split a text into lines of at most {v} characters without breaking words",
        ("wrap", "fill_lines"),
        ("s", "text"),
        _nums(20, 40, 60, 72, 80),
    ),
    CodeTask(
        "str_pad",
        "pad a string {v} with a given character until it is n characters long",
        ("pad", "pad_{s}"),
        ("s, n, c", "text, n, ch"),
        _vs(("left", "on the left"), ("right", "on the right"), ("centre", "on both sides")),
    ),
    CodeTask(
        "str_shorten",
        "shorten a string to at most {v} characters, ending it with '...' when anything was cut",
        ("shorten", "clip"),
        ("s", "text"),
        _nums(10, 20, 50, 100),
    ),
    CodeTask(
        "str_is_valid",
        "check whether a string is a valid {v}",
        ("is_{s}", "valid_{s}"),
        ("s", "text"),
        _vs(
            ("int", "integer, with an optional sign"),
            ("decimal", "decimal number such as '-3.25'"),
            ("binary", "binary number made of 0s and 1s"),
            ("hex", "hexadecimal number"),
            ("time", "time of day written HH:MM"),
            ("date", "date written YYYY-MM-DD"),
            ("ipv4", "IPv4 address"),
            ("identifier", "Python identifier, without using str.isidentifier"),
        ),
    ),
    CodeTask(
        "str_parse_ints",
        "parse a string of {v} into a list of integers",
        ("parse_ints", "read_numbers"),
        ("s", "text"),
        _vs(
            ("comma", "comma-separated integers"),
            ("space", "integers separated by any amount of whitespace"),
            ("ranges", "numbers and ranges such as '1-3,5,8-9'"),
        ),
    ),
    CodeTask(
        "str_count_words",
        "count the words in a sentence that {v}",
        ("count_words", "words_that"),
        ("s", "text"),
        _vs(
            ("vowel_start", "begin with a vowel"),
            ("long", "have more than five letters"),
            ("capital", "begin with a capital letter"),
            ("double", "contain the same letter twice in a row"),
            ("same_ends", "begin and end with the same letter"),
        ),
    ),
    CodeTask(
        "str_acronym",
        "build an acronym from the first letters of the words of a phrase{v}",
        ("acronym", "initials"),
        ("s", "phrase"),
        _vs(("upper", ", in upper case"), ("dots", ", with a full stop after each letter")),
    ),
    CodeTask(
        "str_common_affix",
        "return the longest common {v} of a list of strings",
        ("common_{s}", "shared_{s}"),
        ("words", "strs"),
        _vs(("prefix", "prefix"), ("suffix", "suffix")),
    ),
    CodeTask(
        "str_mask_vowels",
        "replace every vowel in a string with '{v}'",
        ("mask_vowels", "hide_vowels"),
        ("s", "text"),
        _vs(("star", "*"), ("under", "_"), ("dash", "-"), ("q", "?")),
    ),
    CodeTask(
        "str_first_char",
        "return the first {v} character of a string, or None when there is none",
        ("first_{s}", "find_{s}"),
        ("s", "text"),
        _vs(("single", "non-repeating"), ("repeated", "repeated"), ("digit", "digit")),
    ),
    CodeTask(
        "str_property",
        "check whether a string {v}",
        ("is_{s}", "check_{s}"),
        ("s", "text"),
        _vs(
            ("pangram", "uses every letter of the alphabet at least once, ignoring case"),
            ("isogram", "has no letter more than once, ignoring case"),
            ("balanced", "has balanced round, square and curly brackets"),
            ("digits", "is made of digits only, without using str.isdigit"),
            ("alternating", "alternates between vowels and consonants"),
        ),
    ),
    CodeTask(
        "str_distance",
        "compute {v}",
        ("{s}_distance", "distance"),
        ("a, b", "s, t"),
        _vs(
            ("edit", "the edit distance (insertions, deletions, substitutions) of two strings"),
            (
                "hamming",
                "the Hamming distance of two strings, raising ValueError if their lengths differ",
            ),
            ("lcs", "the length of the longest common subsequence of two strings"),
            ("substring", "the length of the longest common substring of two strings"),
        ),
    ),
    CodeTask(
        "str_histogram",
        "draw a text bar chart of a list of non-negative integers, one line of '{v}' "
        "characters per number, and return it as one string",
        ("bars", "histogram"),
        ("xs", "counts"),
        _vs(("star", "*"), ("equals", "="), ("plus", "+"), ("bar", "|")),
    ),
    CodeTask(
        "str_group_digits",
        "format a non-negative integer with {v} between groups of three digits",
        ("group_digits", "format_thousands"),
        ("n", "x"),
        _vs(("comma", "commas"), ("space", "spaces"), ("under", "underscores"), ("dot", "dots")),
    ),
    CodeTask(
        "str_duration",
        "turn a number of seconds into a string of the form {v}",
        ("fmt_duration", "format_seconds"),
        ("n", "secs"),
        _vs(
            ("hms", "HH:MM:SS"),
            ("ms", "MM:SS (minutes may exceed 59)"),
            ("words", "'2h 5m 7s', leaving out parts that are zero"),
        ),
    ),
    # --- arithmetic ----------------------------------------------------------------------------
    CodeTask(
        "num_of_n",
        "compute {v}",
        ("{s}", "get_{s}"),
        ("n",),
        _vs(
            ("factorial", "the factorial of a non-negative integer n without recursion"),
            ("double_factorial", "the double factorial of a non-negative integer n"),
            ("digit_sum", "the sum of the decimal digits of a non-negative integer n"),
            ("digital_root", "the digital root of a non-negative integer n"),
            ("digit_count", "how many decimal digits a non-negative integer n has"),
            ("reversed_digits", "the number written with the digits of n in reverse order"),
            ("ones", "how many ones the binary form of a non-negative integer n contains"),
            (
                "trailing_zeros",
                "how many zeros the factorial of a non-negative integer n ends with",
            ),
        ),
    ),
    CodeTask(
        "num_first_n",
        "return a list of the first n {v} numbers",
        ("first_{s}", "{s}_numbers"),
        ("n",),
        _vs(
            ("fibonacci", "Fibonacci"),
            ("lucas", "Lucas"),
            ("triangular", "triangular"),
            ("square", "square"),
            ("pentagonal", "pentagonal"),
            ("prime", "prime"),
        ),
    ),
    CodeTask(
        "num_nth",
        "return the n-th {v} number, counting from n = 0",
        ("nth_{s}", "{s}"),
        ("n",),
        _vs(
            ("fibonacci", "Fibonacci"),
            ("lucas", "Lucas"),
            ("tribonacci", "tribonacci"),
            ("triangular", "triangular"),
            ("pell", "Pell"),
        ),
    ),
    CodeTask(
        "num_primes_below",
        "return every prime below n, found with {v}",
        ("primes_below", "primes"),
        ("n",),
        _vs(("sieve", "the sieve of Eratosthenes"), ("trial", "trial division")),
    ),
    CodeTask(
        "num_is_kind",
        "check whether a positive integer n is {v}",
        ("is_{s}", "check_{s}"),
        ("n",),
        _vs(
            ("prime", "prime"),
            ("perfect", "a perfect number"),
            ("armstrong", "an Armstrong number"),
            ("happy", "a happy number"),
            ("palindrome", "the same when its digits are reversed"),
            ("power_of_two", "a power of two"),
            ("square", "a perfect square, without floating point"),
            ("harshad", "divisible by the sum of its digits"),
        ),
    ),
    CodeTask(
        "num_gcd_lcm",
        "compute the {v} of two positive integers without the math module",
        ("{s}", "compute_{s}"),
        ("a, b", "x, y"),
        _vs(("gcd", "greatest common divisor"), ("lcm", "least common multiple")),
    ),
    CodeTask(
        "num_to_base",
        "write a non-negative integer in base {v} and return the digits as a string",
        ("to_base", "in_base"),
        ("n", "x"),
        _nums(2, 3, 5, 7, 8, 16),
    ),
    CodeTask(
        "num_from_base",
        "read a string of base-{v} digits as an integer, without passing a base to int",
        ("from_base", "parse_base"),
        ("s", "digits"),
        _nums(2, 3, 8, 16),
    ),
    CodeTask(
        "num_sum_multiples",
        "return the sum of all natural numbers below n that are multiples of {v}",
        ("sum_multiples", "multiples_sum"),
        ("n",),
        _vs(
            ("3_5", "3 or 5"),
            ("2_7", "2 or 7"),
            ("4_6", "4 or 6"),
            ("5_11", "5 or 11"),
            ("7", "7"),
            ("3_5_7", "3, 5 or 7"),
        ),
    ),
    CodeTask(
        "num_divisors",
        "return {v}",
        ("{s}", "get_{s}"),
        ("n",),
        _vs(
            ("divisors", "the divisors of a positive integer n in increasing order"),
            (
                "prime_factors",
                (
                    "the prime factors of a positive integer n, each repeated as often as it "
                    "divides n, smallest first"
                ),
            ),
            ("aliquot", "the sum of the proper divisors of a positive integer n"),
            ("divisor_count", "how many divisors a positive integer n has"),
            (
                "distinct_factors",
                "the distinct prime factors of a positive integer n, smallest first",
            ),
        ),
    ),
    CodeTask(
        "num_collatz",
        "return the {v} of the sequence that starts at a positive integer n and repeatedly "
        "halves even numbers and maps odd ones to 3n + 1 until it reaches 1",
        ("collatz_{s}", "hailstone_{s}"),
        ("n",),
        _vs(
            ("steps", "number of steps"),
            ("terms", "list of terms"),
            ("peak", "largest term"),
        ),
    ),
    CodeTask(
        "num_pow_mod",
        "compute a to the power b modulo {v} by repeated squaring, without the three-argument pow",
        ("pow_mod", "mod_pow"),
        ("a, b",),
        _nums(7, 97, 1000) + _vs(("big", "10**9 + 7")),
    ),
    CodeTask(
        "num_round_to",
        "round a number to the nearest multiple of {v}",
        ("round_to", "snap"),
        ("x", "n"),
        _nums(5, 10, 25, 100, 0.5),
    ),
    CodeTask(
        "num_clamp",
        "clamp a number into the range {v}",
        ("clamp", "bound"),
        ("x", "n"),
        _vs(("unit", "0 to 1"), ("sym", "-1 to 1"), ("byte", "0 to 255"), ("pct", "1 to 100")),
    ),
    CodeTask(
        "num_temperature",
        "convert a temperature from {v}",
        ("convert", "{s}"),
        ("t", "x"),
        _vs(
            ("c_to_f", "Celsius to Fahrenheit"),
            ("f_to_c", "Fahrenheit to Celsius"),
            ("c_to_k", "Celsius to Kelvin"),
            ("k_to_f", "Kelvin to Fahrenheit"),
        ),
    ),
    CodeTask(
        "num_units",
        "convert a length from {v}",
        ("convert", "{s}"),
        ("x", "d"),
        _vs(
            ("km_to_mi", "kilometres to miles"),
            ("mi_to_km", "miles to kilometres"),
            ("m_to_ft", "metres to feet"),
            ("in_to_cm", "inches to centimetres"),
        ),
    ),
    CodeTask(
        "num_roman",
        "convert {v}",
        ("{s}", "convert"),
        ("x", "v"),
        _vs(
            ("to_roman", "an integer from 1 to 3999 into a Roman numeral"),
            ("from_roman", "a Roman numeral into an integer"),
        ),
    ),
    CodeTask(
        "num_matrix",
        "return {v} of a matrix given as a list of rows",
        ("{s}", "matrix_{s}"),
        ("m", "rows"),
        _vs(
            ("transpose", "the transpose"),
            ("trace", "the trace"),
            ("diagonal", "the main diagonal, as a list,"),
            ("row_sums", "the sum of each row"),
            ("col_sums", "the sum of each column"),
            ("mirror", "the left-to-right mirror image"),
            ("spiral", "the elements, in clockwise spiral order from the top-left corner,"),
        ),
    ),
    CodeTask(
        "num_matrix_rotate",
        "rotate a square matrix given as a list of rows {v}",
        ("rotate", "turn"),
        ("m", "grid"),
        _vs(
            ("cw", "a quarter turn clockwise"),
            ("ccw", "a quarter turn anticlockwise"),
            ("half", "by half a turn"),
        ),
    ),
    CodeTask(
        "num_matmul",
        "multiply two matrices given as lists of rows{v}",
        ("matmul", "mat_mult"),
        ("a, b", "x, y"),
        _vs(("plain", ""), ("check", ", raising ValueError when their shapes do not fit")),
    ),
    CodeTask(
        "num_vectors",
        "compute the {v} of two vectors of equal length given as lists",
        ("{s}", "vec_{s}"),
        ("a, b", "u, v"),
        _vs(
            ("dot", "dot product"),
            ("euclid", "Euclidean distance"),
            ("manhattan", "Manhattan distance"),
            ("cosine", "cosine similarity"),
            ("add", "element-wise sum"),
        ),
        header="import math",
    ),
    CodeTask(
        "num_polynomial",
        "evaluate at x a polynomial whose coefficients are listed {v}",
        ("poly_eval", "evaluate"),
        ("cs, x", "coeffs, x"),
        _vs(("high", "from the highest power down"), ("low", "from the constant term up")),
    ),
    CodeTask(
        "num_calendar",
        "{v}",
        ("{s}", "calendar_{s}"),
        ("y", "year"),
        _vs(
            ("is_leap", "check whether a year is a leap year in the Gregorian calendar"),
            (
                "month_days",
                "return the number of days in month m of year y",
                ("y, m",),
            ),
            ("year_days", "return the number of days in a year of the Gregorian calendar"),
        ),
    ),
    CodeTask(
        "num_isqrt",
        "compute the integer square root of a non-negative integer n {v}",
        ("isqrt", "int_sqrt"),
        ("n",),
        _vs(("newton", "with Newton's method"), ("bisect", "by bisection")),
    ),
    CodeTask(
        "num_triangle",
        "{v}",
        ("triangle_{s}", "{s}"),
        ("a, b, c",),
        _vs(
            (
                "kind",
                (
                    "name the kind of triangle with side lengths a, b and c: 'equilateral', "
                    "'isosceles', 'scalene' or 'invalid'"
                ),
            ),
            ("right", "check whether three side lengths form a right-angled triangle"),
            (
                "area",
                "return the area of a triangle from its three side lengths with Heron's formula",
            ),
        ),
        header="import math",
    ),
    CodeTask(
        "num_interest",
        "return the balance after n years when an amount p earns interest at rate r, {v}",
        ("balance", "grow"),
        ("p, r, n",),
        _vs(
            ("simple", "as simple interest"),
            ("yearly", "compounded once a year"),
            ("monthly", "compounded every month"),
        ),
    ),
    CodeTask(
        "num_binomial",
        "compute the binomial coefficient n choose k {v}",
        ("choose", "binomial"),
        ("n, k",),
        _vs(
            ("mult", "with integer arithmetic only"), ("pascal", "from a row of Pascal's triangle")
        ),
    ),
    # --- small utilities -----------------------------------------------------------------------
    CodeTask(
        "util_pascal",
        "return the first n rows of Pascal's triangle as lists",
        ("pascal", "pascal_rows"),
        ("n",),
    ),
    CodeTask(
        "util_subsets",
        "return all {v} of a list, without itertools",
        ("{s}", "all_{s}"),
        ("xs", "items"),
        _vs(
            ("permutations", "orderings"),
            ("subsets", "subsets"),
            ("pairs", "unordered pairs of elements"),
            ("triples", "unordered groups of three elements"),
        ),
    ),
    CodeTask(
        "util_coin_ways",
        "count the ways to make an amount n from coins worth {v}, order not mattering",
        ("coin_ways", "change_ways"),
        ("n",),
        _vs(
            ("a", "1, 2 and 5"), ("b", "1, 5, 10 and 25"), ("c", "2, 3 and 7"), ("d", "1, 3 and 4")
        ),
    ),
    CodeTask(
        "util_fewest_coins",
        "return the fewest coins worth {v} that add up to an amount n, or -1 when it cannot be "
        "done",
        ("fewest_coins", "min_coins"),
        ("n",),
        _vs(("a", "1, 2 and 5"), ("b", "1, 5, 10 and 25"), ("c", "3, 7 and 11"), ("d", "4 and 9")),
    ),
    CodeTask(
        "util_stairs",
        "count the ways to climb a staircase of n steps taking {v} steps at a time",
        ("climb", "stair_ways"),
        ("n",),
        _vs(("12", "1 or 2"), ("123", "1, 2 or 3"), ("25", "2 or 5"), ("13", "1 or 3")),
    ),
    CodeTask(
        "util_grid_paths",
        "count the paths from the top-left to the bottom-right corner of an m by n grid moving "
        "only {v}",
        ("grid_paths", "count_paths"),
        ("m, n",),
        _vs(("rd", "right or down"), ("rdd", "right, down or diagonally down-right")),
    ),
    CodeTask(
        "util_knapsack",
        "return the largest total value of items that fit into a capacity w, given lists of "
        "item weights and values{v}",
        ("knapsack", "best_value"),
        ("ws, vs, w", "weights, values, w"),
        _vs(
            ("once", ", each item used at most once"),
            ("repeat", ", each item usable any number of times"),
        ),
    ),
    CodeTask(
        "util_intervals",
        "{v}",
        ("{s}", "intervals_{s}"),
        ("xs", "spans"),
        _vs(
            ("merge", "merge overlapping intervals given as (start, end) pairs"),
            ("covered", "return the total length covered by a list of (start, end) intervals"),
            ("overlaps", "check whether any two (start, end) intervals in a list overlap"),
        ),
    ),
    CodeTask(
        "util_password",
        "check whether a password has at least {v} characters, a digit, a lower-case letter "
        "and an upper-case letter",
        ("strong_password", "check_password"),
        ("s", "pw"),
        _nums(8, 10, 12, 16),
    ),
    CodeTask(
        "util_checksum",
        "check whether {v}",
        ("{s}", "valid_{s}"),
        ("s", "code"),
        _vs(
            ("luhn", "a string of digits passes the Luhn checksum"),
            ("isbn10", "a string is a valid ISBN-10"),
            ("isbn13", "a string is a valid ISBN-13"),
        ),
    ),
    CodeTask(
        "util_binary_strings",
        "return all binary strings of length n{v}",
        ("binary_strings", "bit_strings"),
        ("n",),
        _vs(
            ("all", ""),
            ("no11", " without two ones next to each other"),
            ("balanced", " with as many ones as zeros"),
        ),
    ),
    CodeTask(
        "util_brackets",
        "return every string of n pairs of {v} brackets that is balanced",
        ("balanced_brackets", "bracket_strings"),
        ("n",),
        _vs(("round", "round"), ("square", "square")),
    ),
    CodeTask(
        "util_stack_eval",
        "evaluate an arithmetic expression {v}",
        ("evaluate", "calc"),
        ("s", "expr"),
        _vs(
            ("rpn", "written in reverse Polish notation with + - * / and integers"),
            ("infix", "with + - * /, parentheses and integers, without eval"),
        ),
    ),
    CodeTask(
        "util_bits",
        "{v}",
        ("{s}", "bits_{s}"),
        ("n", "x"),
        _vs(
            ("gray", "return the Gray code of a non-negative integer"),
            ("bit_reverse", "reverse the lowest 8 bits of an integer from 0 to 255"),
            ("parity", "return 1 if a non-negative integer has an odd number of set bits, else 0"),
        ),
    ),
)


# {task}: the task sentence (a verb phrase); {Task}: the same with a capital letter.
INTROS: tuple[str, ...] = (
    "Complete the code below so that it does the following: {task}.",
    "Finish the function below. It should {task}.",
    "Here is a task: {task}. Fill in the template below to carry it out.",
    "Your job is to {task}. Finish the Python code below to do that.",
    "Fill in the body of the function below so that it will {task}.",
    "Write the missing code in the function below; it has to {task}.",
    "The function below is unfinished. Complete it so that it can {task}.",
    "Task: {Task}. Complete the given code to accomplish it.",
    "Make the following function {task} by writing its body.",
    "I need code that will {task}. Please complete the template below.",
    "Using the template below, write Python that will {task}.",
    "Complete this Python snippet. The goal is to {task}.",
)

REPEAT_REQUESTS: tuple[str, ...] = (
    "Repeat the full snippet in your answer, changing it wherever needed so that it does the task.",
    "Reproduce the whole snippet in your reply, edited as needed so that it works.",
    "Your answer should contain the entire snippet, completed.",
    "Write out the complete code again, the def line included, with your changes.",
    "Give back the full snippet with the body filled in.",
    "Include the whole function in your response, not only the new lines.",
    "Repeat the template in full, with the placeholder replaced by working code.",
    "Copy the complete snippet into your answer and fill it in.",
)

CODE_ONLY_REQUESTS: tuple[str, ...] = (
    "Respond with code only.",
    "Give nothing but the code.",
    "Do not write any explanation, only code.",
    "Reply with the code alone.",
    "No prose: just the code.",
    "Output only Python code.",
    "Leave out any text other than the code.",
    "Your reply must consist of code and nothing else.",
)

NO_COMMENT_REQUESTS: tuple[str, ...] = (
    "Do not include comments.",
    "Write no comments or docstrings.",
    "Leave the code free of comments.",
    "Avoid comments of any kind.",
    "Don't add comments.",
    "The code must not contain comments.",
)

SHORT_NAME_REQUESTS: tuple[str, ...] = (
    "Use minimal variable names.",
    "Keep variable names as short as possible.",
    "Use very short names for variables.",
    "Pick brief, minimal identifiers.",
    "Name variables with as few characters as you can.",
    "Use single-letter variable names where possible.",
)

# Where the template goes: between the intro and the requests, or after the requests.
LAYOUTS: tuple[str, ...] = ("code_then_requests", "requests_then_code")
FENCES: tuple[str, ...] = ("```python", "```")


def render_template(task: CodeTask, name: str, args: str, placeholder: str) -> str:
    """The code a prompt asks to complete: the task's header, then ``def name(args):`` with a
    one-line placeholder body (no docstring, no comment). ``name`` is the final function name."""
    head = f"{task.header}\n\n\n" if task.header else ""
    return f"{head}def {name}({args}):\n{INDENT}{placeholder}"


def template_keys() -> list[str]:
    """Every task template key, in table order."""
    return [t.template_key(v) for t in TASKS for v in t.variants]


def task_sentence(task: CodeTask, variant: Variant) -> str:
    return task.sentence.format(v=variant.text)


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def code_prompts(n: int, rng: np.random.Generator) -> list[Prompt]:
    """``n`` code-completion prompts drawn from ``rng`` (deterministic for its state; the draw
    order is in the module docstring).

    Each prompt's ``meta`` records the language, the template key (``task``), the base task
    (``family``), the function name, the argument list, the placeholder and the template text.
    """
    if n < 0:
        raise ValueError(f"code_prompts needs n >= 0, got {n}")
    prompts: list[Prompt] = []
    for i in range(n):
        task = TASKS[int(rng.integers(len(TASKS)))]
        variant = task.variants[int(rng.integers(len(task.variants)))]
        name = _pick(task.names, rng).format(s=variant.slug)
        args = _pick(variant.args or task.args, rng)
        placeholder = _pick(PLACEHOLDERS, rng)
        sentence = task_sentence(task, variant)
        intro = _pick(INTROS, rng).format(task=sentence, Task=sentence[:1].upper() + sentence[1:])
        requests = [
            _pick(REPEAT_REQUESTS, rng),
            _pick(CODE_ONLY_REQUESTS, rng),
            _pick(NO_COMMENT_REQUESTS, rng),
            _pick(SHORT_NAME_REQUESTS, rng),
        ]
        order = rng.permutation(len(requests))
        layout = _pick(LAYOUTS, rng)
        fence = _pick(FENCES, rng)
        template = render_template(task, name, args, placeholder)
        block = f"{fence}\n{template}\n```"
        asks = " ".join(requests[int(j)] for j in order)
        parts = [intro, block, asks] if layout == "code_then_requests" else [intro, asks, block]
        prompts.append(
            Prompt(
                id=f"code-{i:06d}",
                text="\n\n".join(parts),
                meta={
                    "language": LANGUAGE,
                    "task": task.template_key(variant),
                    "family": task.key,
                    "function": name,
                    "args": args,
                    "placeholder": placeholder,
                    "template": template,
                },
            )
        )
    return prompts
