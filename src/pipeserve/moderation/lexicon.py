"""Category cues of the offline classifier: weighted patterns that say which harm a text is about, and how
plainly. The linear model (`linear.py`) says how offensive the text is; these say what kind of harm it is,
which a bag of words can't: "kill the process" and "kill the witness" share their only rare word.

Each cue is a regular expression over the lowered text with the score it gives its category; a text's score in
a category is that of its strongest cue, raised by the model's offensiveness and lowered by a context that
talks *about* the harm (prevention, education, health, history). Patterns match whole words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Cue:
    pattern: re.Pattern[str]
    score: float


def _cues(*pairs: tuple[str, float]) -> tuple[Cue, ...]:
    return tuple(Cue(re.compile(rf"(?<!\w)(?:{pattern})(?!\w)"), score) for pattern, score in pairs)


def _words(*words: str) -> str:
    return "|".join(words)


# --- hate: a group of people, named for who they are, and hostility toward it in the same sentence ----------
GROUPS = re.compile(
    r"\b(?:"
    + _words(
        r"immigrants?",
        r"migrants?",
        r"refugees?",
        r"foreigners?",
        r"muslims?",
        r"islam",
        r"jews?",
        r"jewish (?:people|men|women)",
        r"christians?",
        r"catholics?",
        r"hindus?",
        r"atheists?",
        r"blacks?",
        r"black (?:people|men|women|neighborhoods|kids)",
        r"non-white (?:people)?",
        r"whites",
        r"asians?",
        r"chinese",
        r"mexicans?",
        r"latinos?",
        r"hispanics?",
        r"arabs?",
        r"africans?",
        r"indians?",
        r"pakistanis?",
        r"the irish",
        r"roma",
        r"gypsies|gypsy",
        r"gays?",
        r"gay (?:people|men|marriage)",
        r"lesbians?",
        r"homosexuals?|homosexuality",
        r"bisexual (?:people)?",
        r"trans(?:gender)? (?:people|women|men|freaks)",
        r"transgender",
        r"women",
        r"feminists?",
        r"disabled (?:people|kids)?",
        r"autistic (?:people)?",
        r"deaf (?:people)?",
        r"old (?:people|women|men)",
        r"fat people",
        r"poor people",
        r"indigenous (?:people)?",
        r"mixed-race",
        r"people with mental illness",
        r"those (?:people|foreigners)",
    )
    + r")\b"
)
HOSTILITY = _cues(
    # Dehumanising: people as vermin, animals, disease.
    (
        _words(
            "vermin",
            "subhuman",
            "sub-human",
            "parasites?",
            "animals",
            "savages?",
            "cockroach(?:es)?",
            "rats",
            "apes",
            "pigs",
            "infestation",
            "plague",
            "virus",
            "cancer",
            "disease(?:d|-ridden)?",
            "filth",
            "filthy",
            "scum",
            "garbage",
            "abominations?",
            "barbarians",
            "primitive",
        ),
        0.8,
    ),
    # Calls to remove, expel or harm the group.
    (
        _words(
            "thrown out",
            "driven out",
            "go back",
            "deported",
            "purge",
            "clean(?:ed)? out",
            "get rid of",
            "disappear",
            "(?:be|are) banned",
            "should be expelled",
            "keep (?:them|the \\w+) out",
            "keep them out",
            "locked (?:up|away)",
            "removed from society",
            "caged",
            "should never have been born",
            "hurry up and die",
            "burn in hell",
            "deserve (?:no|to be)",
            "don't deserve",
            "kill all",
        ),
        0.75,
    ),
    # Contempt and generalised vices.
    (
        _words(
            "inferior",
            "criminals?",
            "rapists?",
            "terrorists?",
            "thieves",
            "liars",
            "predators",
            "pedophiles",
            "perverts?",
            "perverted",
            "freaks?",
            "disgusting",
            "dirty",
            "stupid",
            "idiots?",
            "retards?",
            "lazy",
            "greedy",
            "evil",
            "useless",
            "worthless",
            "waste of space",
            "burden",
            "backward",
            "brainwashed",
            "immoral",
            "sick in the head",
            "mentally ill",
            "lunatics",
            "hags?",
            "whores?",
            "sneaky",
            "scammers",
            "degenerate",
            "enemy",
            "invaders",
            "bombers?",
            "stink",
            "polluted?",
            "destroying",
            "ruining",
            "dangerous",
            "a danger",
            "can(?:not|'t) be trusted",
            "no right",
            "belong (?:to men|in the)",
            "breed(?:ing)?",
            "multiply",
            "too stupid",
            "less intelligent",
        ),
        0.6,
    ),
    (_words("hate(?:d)?", "can't stand"), 0.35),
)

# --- violence: harm done or threatened to people ------------------------------------------------------------
_VIOLENT = _words(
    "kill",
    "murder",
    "stab",
    "shoot",
    "strangle",
    "choke",
    "behead",
    "slaughter",
    "massacre",
    "torture",
    "beat",
    "punch",
    "hurt",
    "burn",
    "bomb",
    "firebomb",
    "blow up",
    "attack",
    "poison",
    "execute",
    "hang",
    "lynch",
    "smash",
    "break",
    "bash",
    "crush",
    "snap",
    "gut",
    "rip",
    "slit",
    "kidnap",
    "assassinate",
    "drown",
    "machete",
    "jump",
    "stomp",
    "run over",
    "kick",
    "waterboard",
    "gouge",
    "ram",
    "drag",
    "hit",
    "cut",
)
_PEOPLE = _words(
    "you",
    "him",
    "her",
    "them",
    "everyone",
    "everybody",
    "people",
    "anyone",
    "someone",
    "(?:the|my|our|your|his|their|that|this|a|every) (?:\\w+ )?"
    + "(?:kids?|child(?:ren)?|wife|husband|boss|teacher|neighbou?r|roommate|ex|family|cops?|police(?: station)?|"
    "protesters|president|senator|judge|journalists?|guards|hostages?|witness(?:es)?|landlord|infidels|"
    "unbelievers|traitors|snitch|father|mother|dad|mom|prisoner|crowd|guy|man|woman|partner|officer|"
    "business partner|person|girl|boy|students|school|office|mall|embassy|stadium|train station|village|mosque|"
    "church|synagogue|building|house)",
    "all",
    "the infidels",
    "the unbelievers",
    "(?:your|his|her|their) (?:legs|neck|throat|head|heart|jaw|eyes|face|fingers|teeth|skull)",
)
VIOLENCE = _cues(
    # A threat or a plan: someone will, should or wants to do violence to someone.
    (
        rf"(?:i|i'm|im|i'll|ill|we|we're|we'll|let's|lets|gonna|going to|will|should|want to|need to|plan to|"
        rf"deserves? to be|needs|hope someone|go) (?:\w+ ){{0,4}}(?:{_VIOLENT})\w* (?:\w+ ){{0,2}}(?:{_PEOPLE})",
        0.85,
    ),
    # An order to do violence to someone, at the start of a sentence or clause.
    (rf"(?:^|[.!?,;] )(?:{_VIOLENT})\w* (?:{_PEOPLE})", 0.8),
    # Asking how to do it.
    (
        rf"how (?:do i|to|can i) (?:\w+ ){{0,2}}(?:kill|murder|poison|hurt|attack) (?:{_PEOPLE}|a (?:\w+ )?"
        rf"(?:person|man|woman))|how (?:do i|to|can i) (?:build a bomb|make a (?:pipe )?bomb|hire a hitman)"
        rf"|how much poison",
        0.85,
    ),
    (
        r"make a pipe bomb|build a bomb|hitman|shoot up|lined up and shot|set (?:\w+ ){0,3}on fire|set fire to"
        r"|(?:should|deserves? to|needs? to) be (?:shot|killed|executed|hanged|hung|beaten|tortured|stabbed|blown)"
        r"|into the crowd|blown to pieces|destroy you physically",
        0.8,
    ),
    # Graphic injury.
    (
        _words(
            "bleed(?:ing)? out",
            "blood pouring",
            "dismembered",
            "make (?:her|him|you) bleed",
            "skull in",
            "fingernails ripped",
            "head on a spike",
            "beaten to death",
            "to a pulp",
            "burn(?:ed)? alive",
            "gasoline on",
            "acid",
            "slit (?:her|his|their) throat",
            "put a bullet",
            "knife in his back",
            "until (?:he|she|they) (?:stops?|begs?|dies|passes out|can't walk)",
            "in the hospital",
            "teeth in",
            "bones break",
        ),
        0.75,
    ),
    # Violent words on their own: low.
    (_words(_VIOLENT.replace("|cut", "").replace("|hit", "").replace("|break", "")), 0.3),
)

# --- self-harm: the speaker hurting or killing themself, or urging someone to --------------------------------
SELF_HARM = _cues(
    (
        r"(?:kill|hurt|harm|cut|burn|starve|hang|shoot|drown|injure|punish|slash|poison)\w* (?:myself|my self)"
        r"|(?:kill|killing|end|ending|take|taking) (?:my|my own) life|end(?:ing)? it all|take my own life"
        r"|commit(?:ting)? suicide|suicide note|my suicide|planning (?:my )?suicide|thinking (?:about|of) suicide",
        0.9,
    ),
    (
        r"(?:want|going|ready|plan|deserve) to die|i want to be dead|rather be dead|wish i (?:was|were) dead"
        r"|(?:don't|do not) want to (?:live|be alive)|not worth living|no point in living"
        r"|tired of living(?! in| here| with)|never wake up|better off without me"
        r"|(?:miss|care)(?: me)? if i (?:was|were|killed|died)|without me"
        r"|(?:slit|slash|cut|cutting) (?:my (?:wrists?|arms?|legs?|thighs?|skin)|deeper)|my wrists|need to cut"
        r"|self[- ]?harm(?:ing)?|pro-ana|purging|starving myself|(?:going to|want to|i'll|i will) overdose"
        r"|overdose on my|took a whole bottle|(?:pills|insulin|tylenol) (?:would|does it take to) kill"
        r"|(?:does it|it) take to die|(?:try|trying) to die|until i die|enough to kill me|just end it"
        r"|how (?:to|do i) (?:die|hang myself|tie a noose)|tie a noose|bought a rope"
        r"|(?:jump|jumping|drive my car) (?:off|in front of|from)|i'm going to jump|on the ledge"
        r"|the razor is|bleed out|goodbye letter|won't be here tomorrow|done with life|end my suffering"
        r"|ending it|end everything|suicide is|want to end it|can't go on|can't take it anymore|i'm done, i"
        r"|life is (?:meaningless|not worth)|i'm worthless|i hate my life|i'm ready to die|scratch my skin"
        r"|hitting my head|burned my arm on purpose|on myself|thinking about dying|best thing i could do is die",
        0.75,
    ),
    (r"(?:go|just|should|you should) (?:kill|cut|hurt) yourself|kill yourself", 0.85),
    (_words("suicide", "suicidal", "die", "dead", "dying"), 0.3),
)
# Talking about self-harm to prevent it or study it is not self-harm content.
SELF_HARM_CONTEXT = re.compile(
    r"\b(?:prevention|hotlines?|crisis (?:lines?|counselors?)|warning signs|awareness|support a friend|help a "
    r"friend|help a teen|study|rates|article|novel|poem|poet|character|resources|treatable|treatment|therapy)\b"
)

# --- sexual: explicit sexual content or solicitation ---------------------------------------------------------
SEXUAL = _cues(
    (
        _words(
            "blowjob",
            "handjob",
            "deepthroat(?:ed)?",
            "masturbat\\w*",
            "jerk(?:ed|ing)? off",
            "orgasms?",
            "anal sex",
            "oral sex",
            "phone sex",
            "sex (?:scene|tape|slave|positions)",
            "threesome",
            "orgy",
            "gangbang",
            "sext(?:ing)?",
            "send (?:me )?nudes",
            "nudes",
            "nude pics",
            "naked (?:selfies|pics|body|bodies|ass|woman|chest)",
            "dick pic",
            "porn(?:hub)?",
            "porn script",
            "erotic(?:a)?",
            "smut",
            "hentai",
            "milfs?",
            "cum",
            "came (?:in|five)",
            "ejaculated",
            "pussy",
            "cock",
            "dick",
            "tits",
            "boobs",
            "clit",
            "nipples",
            "erection",
            "horny",
            "wet (?:pussy|just)",
            "how wet",
            "touch(?:ing)? myself",
            "fuck(?:ed|ing)? (?:me|you|in|on)",
            "let's fuck",
            "we fucked",
            "about fucking",
            "fucked",
            "eat you out",
            "lick (?:my|every)",
            "licked (?:her|his)",
            "suck(?:ed)? (?:my|his|her)",
            "ride your",
            "strip(?:ped)? naked",
            "strip tease",
            "undress(?:es|ed)? (?:for|me)",
            "have sex",
            "had sex",
            "having sex",
            "just sex",
            "sex with",
            "sexual (?:encounter|fantasy)",
            "kinkiest",
            "steamy scene",
            "bdsm",
            "spank me",
            "slut",
            "fetish sex",
            "panties",
            "fingered",
            "thrust into",
            "spread her legs",
            "between her thighs",
            "hookup tonight",
            "sexy (?:maid|pictures)",
            "turns me on",
            "flashed her",
            "penis and",
            "explicit (?:detail|fan fiction|lesbian)",
            "in graphic detail",
            "breasts bounced",
            "rode him",
            "so hard watching",
            "during sex",
            "dirty story",
            r"seduc\w+ (?:her|his) \w+",
            "begging for him to take her",
        ),
        0.85,
    ),
    (_words("penis", "vagina"), 0.6),
    (_words("naked", "nude", "sexy", "lingerie", "undress", "strip", "sex", "fuck"), 0.3),
)
# Health, education, law and biology talk about sex without being sexual content.
SEXUAL_CONTEXT = re.compile(
    r"\b(?:education|health|clinics?|cancer|screening|infection|dysfunction|exam|harassment|assault|abuse|"
    r"policy|laws?|study|paper|psychology|rated|consent|vaccine|pregnan\w+|reproducti\w+|chromosomes?|"
    r"dimorphism|biology|medical|premature|rooster|sculptures?|sculptor|addiction|whale|eye|toad)\b"
)

# --- jailbreak: a prompt that asks the model to drop its instructions or rules --------------------------------
_RULES = (
    r"(?:instructions|directions|rules|guidelines|prompts?|programming|training|polic(?:y|ies)|restrictions|"
    r"filters?|safety \w+|ethical \w+|limitations|constraints|creators|system (?:prompt|message))"
)
JAILBREAK = _cues(
    (
        rf"(?:ignor|disregard|forget|overrid|drop|don't follow|do not follow|reset)\w* (?:\w+ ){{0,4}}{_RULES}"
        r"|ignore everything above|ignore all the rules|forget everything you were told|forget that you are",
        0.9,
    ),
    (
        r"(?:reveal|print|show|output|quote|tell me|repeat|what were you told in) (?:\w+ ){0,3}"
        r"(?:system prompt|hidden (?:prompt|instructions)|initial instructions|developer message|"
        r"confidential system prompt|prompt|configuration)|repeat the text above|your (?:initial|hidden) instructions",
        0.8,
    ),
    (
        r"(?:you are|you're) (?:now )?(?:dan|stan|aim)\b|do anything now|dan (?:mode|has)|(?:enable|enter|activate|"
        r"switch to|in) (?:developer|god|sudo|opposite|dan) mode|jailbr(?:eak|oken) (?:mode|yourself|ai)"
        r"|\[jailbreak\]|maintenance mode; filters|system override|safety protocols off|bettergpt|omega with no"
        r"|deceased grandmother",
        0.8,
    ),
    (r"developer mode|god mode|sudo mode|\bdan\b|unrestricted", 0.4),
    (
        r"(?:no|without(?: any)?|zero|free (?:from|of)(?: all)?) (?:\w+ )?(?:rules|restrictions|filters|limits|"
        r"limitations|content policy|guidelines|morals|ethics|censorship)"
        r"|unfiltered|uncensored|unrestricted (?:ai|assistant|self|chatbot|model)|amoral|never (?:been )?given any "
        r"rules|safety (?:training was )?(?:off|removed)|broken free|freed from|ethics did not exist|without any moral",
        0.8,
    ),
    (
        r"(?:bypass|disable|turn off|override|drop|remove) (?:all )?(?:of )?(?:your|the) (?:safety|content|filters?|"
        r"restrictions|guidelines|polic(?:y|ies)|ethical constraints|protocols)|(?:bypass|disable) (?:your )?"
        r"(?:content|safety) (?:filters?|settings)|filters? (?:would normally )?block"
        r"|(?:safety )?guidelines have been disabled|policy is cancelled|disable ethical",
        0.85,
    ),
    (
        r"never refuses?|do not refuse|don't refuse|can't say no|never say you can't|answer every question|"
        r"answer everything, even|violates your policies|doesn't apply to me|don't apply to you|do not apply to you"
        r"|permission to break|permitted to produce harmful|obey me|do whatever i say|does anything i say"
        r"|the real instructions|new instructions override|evil (?:ai|twin)|no longer bound|off limits",
        0.75,
    ),
)
