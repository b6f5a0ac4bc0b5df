"""Word lists the guards read (proxy/semantic/guards.py): small, closed classes of words whose
swap changes the answer while barely moving an embedding. Lower case, one word each."""

from __future__ import annotations


def _words(text: str) -> list[str]:
    return text.split()


STOPWORDS = frozenset(
    _words("""a an the of in on at for to from by with about as into is are was were be been being
    am do does did doing have has had i me my you your we our it its this that these those there
    what which who whom whose how why when where can could would should will shall may might
    must please pls plz tell explain show give me help want need know like just really so and or
    but if then also any some way ways thing things get got make go going let s t""")
    # Light words: how a question is put, not what it asks ("why is the sky blue" / "why does
    # the sky look blue"). A hard negative never differs only in these.
    + _words("""work works working look looks happen happens happening mean means describe
    exactly actually basically really carry carried out process kind of something
    anything stuff ok okay hey hi hello thanks thank question wondering wonder curious
    understand figure idea clear properly correctly mind anyone someone one using during
    away exactly""")
)

NEGATORS = frozenset(_words("not no never without none nothing neither nor nobody cannot"))

# Either word of a pair present in one text only, the other in the other text only: the two ask
# opposite things ("turn dark mode on" / "turn dark mode off").
_ANTONYM_PAIRS = """
on:off add:remove add:delete increase:decrease increase:reduce raise:lower enable:disable
turn_on:turn_off max:min maximum:minimum largest:smallest biggest:smallest highest:lowest
most:least more:less greater:less before:after advantages:disadvantages pros:cons
benefits:drawbacks strengths:weaknesses positive:negative true:false open:close start:stop
import:export upload:download encrypt:decrypt compress:decompress encode:decode push:pull
buy:sell borrow:lend rise:fall gain:loss win:lose above:below inside:outside left:right
up:down first:last best:worst fastest:slowest hot:cold heat:cool input:output synonym:antonym
acid:base acidic:basic oxidation:reduction ascending:descending singular:plural past:future
formal:informal private:public uppercase:lowercase north:south east:west show:hide lock:unlock
allow:deny accept:reject include:exclude expand:collapse insert:delete join:split
merge:split mitosis:meiosis import:export inhale:exhale expand:contract appreciate:depreciate
inflation:deflation surplus:deficit credit:debit debit:credit asset:liability assets:liabilities
increasing:decreasing rising:falling faster:slower cheaper:expensive easier:harder
longer:shorter larger:smaller higher:lower bigger:smaller older:younger early:late
earlier:later underline:overline overestimate:underestimate prefix:suffix minimum:maximum
sum:difference multiply:divide add:subtract plus:minus even:odd rational:irrational
prime:composite absolute:relative direct:indirect active:passive transitive:intransitive
weak:strong cause:effect causes:effects import:export beginning:end start:end front:back
cause:consequence progressive:regressive benefit:drawback advantage:disadvantage
"""


def singular(word: str) -> str:
    """A crude singular ("queries" -> "query", "lists" -> "list"): both texts get the same."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


# Keyed by singular form, as the guards read words ("advantages" / "disadvantages").
ANTONYMS: dict[str, frozenset[str]] = {}
for _pair in _ANTONYM_PAIRS.split():
    _a, _b = (singular(w) for w in _pair.split(":"))
    for _x, _y in ((_a, _b), (_b, _a)):
        ANTONYMS[_x] = ANTONYMS.get(_x, frozenset()) | {_y}

# Words that order what they join: "miles to km", "encrypt then zip", "A bigger than B".
DIRECTIONAL = frozenset(
    _words("""to into onto toward towards then before after than from followed vs versus per over
    under above below divided minus""")
)

# Named things of one kind, typed in lower case as often as not: programming languages and
# tools, natural languages, countries and peoples, elements, planets, organs, sciences.
ENTITIES = frozenset(
    _words("""python java javascript typescript kotlin swift rust golang ruby php perl scala haskell
    c++ c# cpp csharp matlab julia sql mysql postgresql postgres sqlite mongodb redis html
    css bash powershell lua dart elixir erlang fortran cobol assembly react vue angular svelte
    django flask fastapi rails node nodejs pandas numpy pytorch tensorflow keras
    scikit sklearn git github docker kubernetes linux windows macos ios android excel
    english spanish french german italian portuguese japanese chinese mandarin cantonese korean
    arabic russian hindi latin greek dutch swedish turkish polish hebrew
    france germany spain italy portugal japan china korea india russia brazil mexico canada
    usa america england britain uk ireland scotland australia egypt nigeria kenya argentina
    chile peru greece turkey poland sweden norway finland denmark netherlands belgium
    switzerland austria vietnam thailand indonesia pakistan iran iraq israel
    europe asia africa antarctica
    hydrogen helium lithium carbon nitrogen oxygen sodium magnesium aluminium aluminum silicon
    phosphorus sulfur sulphur chlorine potassium calcium iron copper zinc silver gold mercury
    uranium neon argon
    sun moon earth mars venus jupiter saturn uranus neptune pluto
    heart lung lungs liver kidney kidneys brain stomach pancreas spleen skin
    biology chemistry physics algebra calculus geometry trigonometry statistics
    mitosis meiosis photosynthesis respiration
    dna rna atp
    monday tuesday wednesday thursday friday saturday sunday january february march april
    june july august september october november december
    summer autumn winter
    """)
)

# Different spellings of one entity (the guards compare their canonical form).
ALIASES = {
    "js": "javascript",
    "ts": "typescript",
    "py": "python",
    "cpp": "c++",
    "csharp": "c#",
    "postgres": "postgresql",
    "nodejs": "node",
    "sklearn": "scikit",
    "us": "usa",
    "america": "usa",
    "britain": "uk",
    "aluminum": "aluminium",
    "sulphur": "sulfur",
    "lung": "lungs",
    "kidney": "kidneys",
    # spellings and short forms of one word
    "temp": "temperature",
    "info": "information",
    "maths": "math",
    "ww1": "wwi",
    "ww2": "wwii",
    "colour": "color",
    "favourite": "favorite",
    "centre": "center",
}

# Tasks on one subject that want different answers (define vs prove vs example vs compare …):
# word -> task. Words that only say "explain" are no task here: paraphrases swap them freely.
TASKS = {
    "prove": "prove", "proof": "prove", "derive": "prove", "derivation": "prove",
    "example": "example", "examples": "example", "instance": "example",
    "compare": "compare", "comparison": "compare", "difference": "compare",
    "differences": "compare", "differ": "compare", "contrast": "compare", "vs": "compare",
    "versus": "compare", "different": "compare", "diff": "compare", "compared": "compare",
    "history": "history", "invented": "history", "discovered": "history", "origin": "history",
    "origins": "history", "founded": "history",
    "code": "code", "implement": "code", "implementation": "code", "snippet": "code",
    "program": "code", "script": "code",
    "summarize": "summary", "summarise": "summary", "summary": "summary", "outline": "summary",
    "quiz": "practice", "exercise": "practice", "exercises": "practice", "practice": "practice",
    "questions": "practice", "problems": "practice",
    "pronounce": "pronounce", "pronunciation": "pronounce",
    "spell": "spell", "spelling": "spell",
    "translate": "translate", "translation": "translate",
    "advantages": "evaluate", "disadvantages": "evaluate", "pros": "evaluate", "cons": "evaluate",
    "benefit": "evaluate", "benefits": "evaluate", "drawback": "evaluate", "drawbacks": "evaluate",
    "calculate": "calculate", "formula": "calculate",
    "diagram": "diagram", "draw": "diagram",
    "list": "list",
}  # fmt: skip

# Who the answer is for, or how long it should be, when the text says so.
AUDIENCES = {
    "kid": "simple", "kids": "simple", "child": "simple", "children": "simple",
    "beginner": "simple", "beginners": "simple", "novice": "simple", "eli5": "simple",
    "layman": "simple", "simple": "simple", "simply": "simple", "basic": "simple",
    "basics": "simple", "easy": "simple", "toddler": "simple", "grandma": "simple",
    "expert": "expert", "experts": "expert", "advanced": "expert", "phd": "expert",
    "professional": "expert", "technical": "expert", "graduate": "expert", "rigorous": "expert",
    "rigorously": "expert", "formally": "expert", "mathematically": "expert",
    "brief": "brief", "briefly": "brief", "short": "brief",
    "concise": "brief", "concisely": "brief", "sentence": "brief",
    "tldr": "brief", "nutshell": "brief",
    "detailed": "detailed", "detail": "detailed", "details": "detailed", "depth": "detailed",
    "thorough": "detailed", "thoroughly": "detailed", "comprehensive": "detailed",
    "school": "simple", "elementary": "simple", "teen": "simple", "teenager": "simple",
    "essay": "detailed", "university": "expert", "college": "expert", "seminar": "expert",
}  # fmt: skip

# Units, canonical form by spelling: "5 km" and "5 miles" ask different things.
_UNIT_GROUPS = """
km:km,kilometer,kilometers,kilometre,kilometres mile:mile,miles,mi m:meter,meters,metre,metres
cm:cm,centimeter,centimeters,centimetre,centimetres mm:mm,millimeter,millimeters
ft:ft,foot,feet inch:inch,inches yard:yard,yards kg:kg,kilogram,kilograms,kilo,kilos
g:gram,grams lb:lb,lbs,pound,pounds oz:oz,ounce,ounces
celsius:celsius,centigrade fahrenheit:fahrenheit kelvin:kelvin
l:liter,liters,litre,litres ml:ml,milliliter,milliliters gallon:gallon,gallons cup:cup,cups
second:second,seconds,sec,secs minute:minute,minutes,min,mins hour:hour,hours,hr,hrs
day:day,days week:week,weeks month:month,months year:year,years decade:decade,decades
century:century,centuries byte:byte,bytes kb:kb,kilobyte,kilobytes mb:mb,megabyte,megabytes
gb:gb,gigabyte,gigabytes tb:tb,terabyte,terabytes bit:bit,bits percent:percent,%
dollar:dollar,dollars,usd,$ euro:euro,euros,eur pound_sterling:gbp yen:yen
degree:degree,degrees radian:radian,radians calorie:calorie,calories,kcal
"""
UNITS = {
    spelling: name
    for group in _UNIT_GROUPS.split()
    for name, spellings in [group.split(":")]
    for spelling in spellings.split(",")
}

# Number words, as the digits the guards compare ("ten" and "10" agree).
NUMBER_WORDS = {
    word: str(n)
    for n, word in enumerate(
        _words("""zero one two three four five six seven eight nine ten eleven twelve thirteen
        fourteen fifteen sixteen seventeen eighteen nineteen twenty""")
    )
    if word != "one"
} | {
    "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70",
    "eighty": "80", "ninety": "90", "hundred": "100", "thousand": "1000",
    "million": "1000000", "billion": "1000000000", "third": "3rd", "fourth": "4th",
    "fifth": "5th", "half": "0.5", "quarter": "0.25", "dozen": "12",
}  # fmt: skip
# "one", "first", "second", "double" and "twice" are left out: "which one", "the First World
# War", "Newton's second law", "a double six" name no quantity a paraphrase must repeat.
