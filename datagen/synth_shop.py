"""Synthetic ESCI-like shop search dataset ("synth-shop") in the canonical folder format.

``generate_shop(out_dir)`` writes three CSV files:

- ``items.csv``: ``item_id,title,description,bullet_points,brand,color,category,price``.
  Ids look like ``P000123``; ``price`` is in US dollars (float, two decimals). A few
  descriptions / bullet points are empty (missing values) and a few titles carry upper-case
  or marketing noise, so text normalisation and missing-value handling matter.
- ``interactions.csv``: ``query,item_id,label,esci`` with ``esci`` one of ``exact``,
  ``substitute``, ``irrelevant``. Label rule (ESCI judgements mapped to the 0/1 ``label``
  contract of the canonical format):

  ========== ===== ==================================================================
  esci       label meaning
  ========== ===== ==================================================================
  exact      1     the product satisfies every constraint of the query
  substitute 1     same category, but another brand / colour / model / price band:
                   a relevant alternative a shopper would accept
  irrelevant 0     a product of an unrelated category (an explicit negative)
  complement -     NOT written to interactions: a complement (e.g. the phone for
                   "charger for smartphone") is neither relevant nor irrelevant to a
                   retrieval model; such pairs go to ``complements.csv`` for later use
  ========== ===== ==================================================================

- ``complements.csv``: ``query,item_id`` (ESCI "complement" pairs, see above).
- ``paraphrases.csv``: ``query,category``: each category asked for in words no generated query
  uses (datagen/shop_paraphrases.py), for judging retrieval of unseen wording; never trained on.

There is no timestamp column: the transform splits this dataset by a stable hash.

Planted structure. Every product belongs to one of the categories in :data:`CATEGORIES`
(the single table that also drives query generation and :func:`expected_category`). A
product is (category, brand, product line, colour, audience, occasion, price, spec), and its
title / description / bullet points are rendered from those attributes, e.g.
"Nike Air Zoom Pegasus Running Shoes for Men - Red". Queries are rendered from the same
vocabulary ("nike running shoes", "red dress for wedding", "iphone 13", "charger for
smartphone", "laptop under 500", ...) and judged against the catalog attributes, so a text
query tower plus a content item tower can learn the mapping. A few queries carry a typo or
an extra word. The queries in :data:`ACCEPTANCE_QUERIES` are always generated, each with
exact matches of the expected category.

Deterministic for a given ``seed`` (numpy ``default_rng``; no reliance on ``hash()``/set order).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd

from core.text import normalize_text


@dataclass(frozen=True)
class Category:
    """One product category of the synthetic shop.

    ``name`` is the canonical value of the ``category`` column (lower case). ``aliases`` are
    other query phrases that mean this category. ``brands`` maps a brand's display name to its
    product lines; when ``models_queryable`` the lines are model names shoppers type alone
    ("iphone 13"). ``price`` is the (low, high) range in US dollars. ``accessory_for`` names
    the category this one is a charger for ("charger for <that category>" queries).
    ``complements`` are categories whose products are ESCI complements of this one.
    """

    name: str
    title_word: str
    aliases: tuple[str, ...]
    brands: dict[str, tuple[str, ...]]
    colors: tuple[str, ...]
    price: tuple[float, float]
    features: tuple[str, ...]
    audiences: tuple[str, ...] = ()
    occasions: tuple[str, ...] = ()
    specs: tuple[str, ...] = ()
    models_queryable: bool = False
    accessory_for: Optional[str] = None
    complements: tuple[str, ...] = field(default=())


# The one category <-> keyword table. Query templates, the catalog and expected_category()
# are all derived from it, so adding a category or alias here is the only change needed.
CATEGORIES: tuple[Category, ...] = (
    Category(
        "running shoes", "Running Shoes", ("running sneakers", "running shoe", "runners"),
        {"Nike": ("Air Zoom Pegasus", "Air Max 270", "React Infinity", "Revolution 6"),
         "Adidas": ("Ultraboost 22", "Adizero Boston", "Duramo SL"),
         "ASICS": ("Gel-Kayano 29", "Gel-Nimbus 25", "GT-2000"),
         "New Balance": ("Fresh Foam 1080", "FuelCell Rebel"),
         "Brooks": ("Ghost 15", "Glycerin 20")},
        ("Black", "White", "Red", "Blue", "Grey", "Pink"), (40, 180),
        ("breathable mesh upper", "cushioned midsole", "rubber outsole for grip",
         "lightweight design", "reflective details"),
        audiences=("men", "women", "kids"), occasions=("gym", "marathon", "trail"),
        complements=("water bottle",)),
    Category(
        "dress", "Dress", ("dresses", "gown"),
        {"Zara": ("Lace Maxi", "Wrap Midi", "Satin Slip"),
         "H&M": ("Floral Sundress", "Ruffled Mini"),
         "Calvin Klein": ("Sheath", "Cocktail"),
         "Lauren Ralph Lauren": ("Jersey Gown", "Crepe Midi"),
         "Mango": ("Pleated Midi", "Linen Shirt")},
        ("Red", "Black", "Navy", "White", "Pink", "Green", "Blue"), (25, 250),
        ("flowy skirt", "concealed back zip", "fully lined", "machine washable",
         "adjustable straps"),
        occasions=("wedding", "party", "office", "beach", "cocktail"),
        complements=("handbag",)),
    Category(
        "laptop", "Laptop", ("notebook computer", "laptops"),
        {"Dell": ("XPS 13", "Inspiron 15", "Latitude 7420"),
         "Lenovo": ("ThinkPad X1 Carbon", "IdeaPad 5", "Yoga 7"),
         "HP": ("Spectre x360", "Pavilion 15", "EliteBook 840"),
         "Apple": ("MacBook Air M2", "MacBook Pro 14"),
         "ASUS": ("ZenBook 14", "ROG Strix G15")},
        ("Silver", "Black", "Grey", "Blue"), (350, 2500),
        ("full HD display", "backlit keyboard", "all-day battery life", "fast SSD storage",
         "Wi-Fi 6"),
        occasions=("office", "gaming", "school"),
        specs=("8GB RAM 256GB SSD", "16GB RAM 512GB SSD", "32GB RAM 1TB SSD"),
        models_queryable=True, complements=("laptop charger", "backpack")),
    Category(
        "smartphone", "Smartphone", ("phone", "cell phone", "mobile phone"),
        {"Apple": ("iPhone 12", "iPhone 13", "iPhone 14", "iPhone 15"),
         "Samsung": ("Galaxy S21", "Galaxy S22", "Galaxy S23", "Galaxy A54"),
         "Google": ("Pixel 6", "Pixel 7", "Pixel 8"),
         "OnePlus": ("OnePlus 10 Pro", "OnePlus 11"),
         "Motorola": ("Moto G Power",)},
        ("Black", "White", "Blue", "Purple", "Green"), (200, 1200),
        ("OLED display", "dual camera system", "5G connectivity", "face unlock",
         "water resistant"),
        specs=("128GB Unlocked", "256GB Unlocked", "512GB Unlocked"),
        models_queryable=True, complements=("phone charger", "headphones")),
    Category(
        "phone charger", "Phone Charger", ("usb c charger", "wall charger"),
        {"Anker": ("Nano Pro 20W", "PowerPort III 25W", "737 GaNPrime 120W"),
         "Belkin": ("BoostCharge 25W", "Dual USB-C 40W"),
         "Apple": ("20W USB-C Power Adapter",),
         "Samsung": ("Super Fast 25W",),
         "Spigen": ("ArcStation 30W",)},
        ("White", "Black"), (10, 60),
        ("fast charging for smartphones", "works with iPhone Galaxy and Pixel phones",
         "compact foldable plug", "overheat protection", "USB-C cable included"),
        accessory_for="smartphone", complements=("smartphone",)),
    Category(
        "laptop charger", "Laptop Charger", ("laptop power adapter",),
        {"Dell": ("65W USB-C AC Adapter", "90W Barrel Adapter"),
         "Lenovo": ("ThinkPad 65W USB-C",),
         "HP": ("Smart 90W Adapter",),
         "Anker": ("PowerPort 65W GaN",),
         "UGREEN": ("Nexode 100W",)},
        ("Black", "White"), (20, 90),
        ("charges laptops over USB-C", "short circuit protection", "long power cord",
         "travel friendly size"),
        accessory_for="laptop", complements=("laptop",)),
    Category(
        "headphones", "Headphones", ("earbuds", "earphones", "wireless headphones"),
        {"Sony": ("WH-1000XM5", "WH-CH720N"),
         "Bose": ("QuietComfort 45", "QuietComfort Earbuds II"),
         "Apple": ("AirPods Pro", "AirPods Max"),
         "JBL": ("Tune 510BT", "Live 660NC"),
         "Beats": ("Studio3", "Solo3")},
        ("Black", "White", "Silver", "Blue", "Red"), (30, 550),
        ("active noise cancelling", "30 hour battery", "bluetooth 5.2", "built-in microphone",
         "comfortable ear cushions"),
        occasions=("gym", "travel", "office"), models_queryable=True),
    Category(
        "t-shirt", "T-Shirt", ("tee", "tshirt", "tees"),
        {"Hanes": ("ComfortSoft", "Beefy-T"),
         "Gildan": ("Heavy Cotton", "Ultra Cotton"),
         "Nike": ("Dri-FIT Legend",),
         "Adidas": ("Essentials 3-Stripes",),
         "Champion": ("Classic Jersey",),
         "Under Armour": ("Tech 2.0",)},
        ("Black", "White", "Red", "Blue", "Grey", "Green", "Navy", "Yellow"), (8, 40),
        ("100% cotton", "crew neck", "tagless collar", "pre-shrunk fabric", "moisture wicking"),
        audiences=("men", "women", "kids"), occasions=("gym",)),
    Category(
        "backpack", "Backpack", ("rucksack", "school bag", "laptop backpack"),
        {"JanSport": ("SuperBreak", "Right Pack"),
         "The North Face": ("Borealis", "Jester"),
         "Herschel": ("Little America", "Heritage"),
         "Osprey": ("Daylite Plus",),
         "Samsonite": ("Tectonic",)},
        ("Black", "Navy", "Grey", "Red", "Green", "Pink"), (25, 180),
        ("padded laptop sleeve", "water resistant fabric", "padded shoulder straps",
         "front organiser pocket", "side bottle pockets"),
        occasions=("school", "travel", "hiking")),
    Category(
        "watch", "Watch", ("wristwatch", "watches"),
        {"Casio": ("G-Shock GA-2100", "F-91W", "Edifice"),
         "Seiko": ("Presage", "5 Sports"),
         "Timex": ("Weekender", "Expedition"),
         "Fossil": ("Grant Chronograph", "Neutra"),
         "Citizen": ("Eco-Drive",)},
        ("Black", "Silver", "Gold", "Brown", "Blue"), (20, 600),
        ("stainless steel case", "water resistant to 100m", "sapphire crystal",
         "luminous hands", "leather strap"),
        audiences=("men", "women"), occasions=("office", "wedding", "sport")),
    Category(
        "coffee maker", "Coffee Maker", ("coffee machine", "espresso machine"),
        {"Keurig": ("K-Classic", "K-Mini"),
         "Breville": ("Barista Express", "Bambino Plus"),
         "De'Longhi": ("Dedica", "Magnifica"),
         "Cuisinart": ("DCC-3200",),
         "Mr. Coffee": ("12-Cup Programmable",),
         "Nespresso": ("Vertuo Next",)},
        ("Black", "Silver", "Red", "White"), (30, 800),
        ("programmable timer", "built-in milk frother", "removable water tank",
         "auto shut-off", "brews in under a minute"),
        specs=("single serve", "12 cup", "espresso")),
    Category(
        "jeans", "Jeans", ("denim jeans", "denim"),
        {"Levi's": ("501 Original", "511 Slim", "721 High Rise"),
         "Wrangler": ("Cowboy Cut", "Retro Slim"),
         "Lee": ("Regular Fit",),
         "Calvin Klein": ("Slim Straight",),
         "Gap": ("Straight",)},
        ("Blue", "Black", "Grey", "White"), (25, 120),
        ("stretch denim", "five pocket styling", "zip fly", "mid rise"),
        audiences=("men", "women")),
    Category(
        "jacket", "Jacket", ("coat", "jackets"),
        {"The North Face": ("Nuptse", "Venture 2"),
         "Columbia": ("Watertight II", "Powder Lite"),
         "Patagonia": ("Nano Puff", "Torrentshell 3L"),
         "Levi's": ("Trucker",),
         "Carhartt": ("Detroit",)},
        ("Black", "Navy", "Green", "Red", "Grey"), (40, 350),
        ("waterproof shell", "insulated lining", "adjustable hood", "zip hand pockets",
         "packable design"),
        audiences=("men", "women", "kids"), occasions=("hiking", "winter", "rain")),
    Category(
        "tablet", "Tablet", ("tablets",),
        {"Apple": ("iPad 10th Gen", "iPad Air", "iPad Pro 11"),
         "Samsung": ("Galaxy Tab S8", "Galaxy Tab A8"),
         "Amazon": ("Fire HD 10",),
         "Lenovo": ("Tab P11",)},
        ("Silver", "Grey", "Blue", "Black"), (90, 1100),
        ("10 inch display", "all-day battery", "stereo speakers", "stylus support"),
        specs=("64GB Wi-Fi", "128GB Wi-Fi", "256GB Wi-Fi"), models_queryable=True),
    Category(
        "sunglasses", "Sunglasses", ("shades",),
        {"Ray-Ban": ("Wayfarer", "Aviator", "Clubmaster"),
         "Oakley": ("Holbrook", "Frogskins"),
         "Persol": ("PO3019S",),
         "Maui Jim": ("Peahi",)},
        ("Black", "Tortoise", "Gold", "Silver", "Blue"), (20, 300),
        ("polarized lenses", "100% UV protection", "lightweight frame", "case included"),
        audiences=("men", "women"), occasions=("beach", "driving")),
    Category(
        "yoga mat", "Yoga Mat", ("exercise mat",),
        {"Manduka": ("PRO", "PROlite"),
         "Gaiam": ("Premium Print",),
         "Lululemon": ("The Mat 5mm",),
         "Liforme": ("Travel",)},
        ("Purple", "Black", "Blue", "Pink", "Green"), (15, 150),
        ("non-slip surface", "6mm cushioning", "carrying strap", "eco-friendly material"),
        occasions=("yoga", "pilates", "gym")),
    Category(
        "water bottle", "Water Bottle", ("insulated bottle", "bottle"),
        {"Hydro Flask": ("Standard Mouth", "Wide Mouth"),
         "Yeti": ("Rambler",),
         "Nalgene": ("Wide Mouth Sustain",),
         "Stanley": ("Quencher",),
         "CamelBak": ("Chute Mag",)},
        ("Black", "White", "Blue", "Pink", "Green"), (10, 50),
        ("keeps drinks cold 24 hours", "leak proof lid", "BPA free", "dishwasher safe"),
        occasions=("gym", "hiking")),
    Category(
        "blender", "Blender", ("smoothie maker",),
        {"Vitamix": ("E310", "A3500"),
         "Ninja": ("Professional BL610", "Nutri Ninja"),
         "NutriBullet": ("Pro 900",),
         "KitchenAid": ("K400",),
         "Oster": ("Pro 1200",)},
        ("Black", "Silver", "Red", "White"), (40, 600),
        ("1000 watt motor", "crushes ice", "dishwasher safe jar", "variable speed control"),
        specs=("64 oz", "48 oz", "24 oz")),
    Category(
        "handbag", "Handbag", ("purse", "tote bag"),
        {"Michael Kors": ("Jet Set Tote", "Mercer"),
         "Coach": ("Tabby", "Willow Tote"),
         "Kate Spade": ("Knott",),
         "Tory Burch": ("Perry",)},
        ("Black", "Brown", "Red", "Beige", "Pink"), (50, 450),
        ("genuine leather", "zip top closure", "interior pockets", "detachable strap"),
        occasions=("wedding", "party", "office")),
    Category(
        "desk lamp", "Desk Lamp", ("reading lamp", "led lamp"),
        {"BenQ": ("e-Reading",),
         "IKEA": ("Forsa",),
         "Philips": ("Hue Go",),
         "Lepro": ("LED Touch",),
         "TaoTronics": ("Eye Caring",)},
        ("Black", "White", "Silver"), (15, 200),
        ("dimmable LED", "adjustable arm", "USB charging port", "eye caring light"),
        occasions=("office", "reading")),
)

#: The CEO's acceptance queries and the constraints that define their exact matches.
ACCEPTANCE_QUERIES: dict[str, dict[str, str]] = {
    "nike running shoes": {"category": "running shoes", "brand": "Nike"},
    "red dress for wedding": {"category": "dress", "color": "Red", "occasion": "wedding"},
    "best laptop": {"category": "laptop"},
    "iphone 13": {"category": "smartphone", "line": "iPhone 13"},
    "charger for smartphone": {"category": "phone charger"},
}

_CATEGORY_BY_NAME = {c.name: c for c in CATEGORIES}
#: The held-out paraphrased queries' file (datagen/shop_paraphrases.py).
PARAPHRASES_FILE = "paraphrases.csv"
_ACCESSORY_WORD = "charger for"
_MARKETING_NOISE = ("NEW!", "(2023 Model)", "Best Seller", "- Free Shipping")
_QUERY_NOISE_WORDS = ("buy", "online", "sale", "new", "2023")


def _category_keywords(cat: Category) -> list[str]:
    """Normalised query phrases naming ``cat`` directly: its name, aliases and, if queryable,
    model names. Accessory phrases ("charger for X") are added by :func:`_build_keyword_map`."""
    words = [cat.name, *cat.aliases]
    if cat.models_queryable:
        words += [line for lines in cat.brands.values() for line in lines]
    return [normalize_text(w) for w in words]


def _build_keyword_map() -> dict[str, str]:
    """Normalised keyword -> category name, derived from :data:`CATEGORIES` only."""
    mapping: dict[str, str] = {}

    def claim(keyword: str, category: str) -> None:
        # An ambiguous keyword would make expected_category() (and the labels) ill-defined.
        if mapping.setdefault(keyword, category) != category:
            raise ValueError(f"keyword {keyword!r} claimed by both {mapping[keyword]!r} "
                             f"and {category!r} in CATEGORIES")

    for cat in CATEGORIES:
        for kw in _category_keywords(cat):
            claim(kw, cat.name)
    for cat in CATEGORIES:
        if cat.accessory_for is not None:
            for kw in _category_keywords(_CATEGORY_BY_NAME[cat.accessory_for]):
                claim(f"{_ACCESSORY_WORD} {kw}", cat.name)
    return mapping


_KEYWORD_TO_CATEGORY = _build_keyword_map()
# Longest (most specific) keyword first, so "phone charger" beats "phone" and
# "charger for smartphone" beats "smartphone".
_KEYWORDS_BY_SPECIFICITY = sorted(_KEYWORD_TO_CATEGORY, key=lambda k: (-len(k.split()), -len(k), k))


def expected_category(query: str) -> Optional[str]:
    """Category a synth-shop query is about, or None when no category keyword occurs.

    Matching is on normalised whole-word phrases; the most specific (longest) keyword wins:
    ``expected_category("iphone 13") == "smartphone"``,
    ``expected_category("charger for smartphone") == "phone charger"``.
    """
    padded = f" {normalize_text(query)} "
    for kw in _KEYWORDS_BY_SPECIFICITY:
        if f" {kw} " in padded:
            return _KEYWORD_TO_CATEGORY[kw]
    return None


@dataclass
class _Catalog:
    """Column arrays of the generated catalog, all of length N (number of products).

    Attribute indices refer to the product's own category's tuples in :data:`CATEGORIES`;
    ``audience`` / ``occasion`` / ``spec`` are -1 when the product has none.
    """

    category: np.ndarray  # int [N], index into CATEGORIES
    brand: np.ndarray     # int [N], index into list(cat.brands)
    line: np.ndarray      # int [N], index into cat.brands[brand]
    color: np.ndarray     # int [N]
    audience: np.ndarray  # int [N]
    occasion: np.ndarray  # int [N]
    spec: np.ndarray      # int [N]
    price: np.ndarray     # float [N], US dollars
    rows_by_category: list[np.ndarray]  # per category: int row indices


def _pick(rng: np.random.Generator, sizes: np.ndarray) -> np.ndarray:
    """Uniform index in [0, sizes[i]) per row; -1 where sizes[i] == 0. Vectorised."""
    out = np.floor(rng.random(len(sizes)) * np.maximum(sizes, 1)).astype(np.int64)
    return np.where(sizes > 0, out, -1)


def _sample_catalog(rng: np.random.Generator, n: int) -> _Catalog:
    """Draw N products: categories balanced, attributes uniform within the category."""
    n_cat = len(CATEGORIES)
    category = rng.permutation(np.arange(n) % n_cat)
    brand = np.empty(n, np.int64)
    line = np.empty(n, np.int64)
    color = np.empty(n, np.int64)
    audience = np.empty(n, np.int64)
    occasion = np.empty(n, np.int64)
    spec = np.empty(n, np.int64)
    price = np.empty(n, np.float64)
    rows_by_category = []
    for ci, cat in enumerate(CATEGORIES):
        rows = np.flatnonzero(category == ci)
        rows_by_category.append(rows)
        m = len(rows)
        brand_lines = list(cat.brands.values())
        b = rng.integers(0, len(brand_lines), m)
        brand[rows] = b
        line[rows] = _pick(rng, np.array([len(brand_lines[i]) for i in b], np.int64))
        color[rows] = rng.integers(0, len(cat.colors), m)
        audience[rows] = _pick(rng, np.full(m, len(cat.audiences)))
        # Not every product is marketed for an occasion; 30% stay generic.
        occ = _pick(rng, np.full(m, len(cat.occasions)))
        occasion[rows] = np.where(rng.random(m) < 0.7, occ, -1)
        spec[rows] = _pick(rng, np.full(m, len(cat.specs)))
        lo, hi = cat.price
        # Right-skewed prices, ending in .99 like real listings.
        raw = lo + (hi - lo) * rng.beta(2.0, 3.0, m)
        price[rows] = np.maximum(np.floor(raw), lo) + 0.99
    return _Catalog(category, brand, line, color, audience, occasion, spec, price,
                    rows_by_category)


def _attr_index(cat: Category, key: str, value: str) -> tuple:
    """Resolve a constraint value (display string) to ``(attribute, index)``, or
    ``("line", brand index, line index)`` for a product line."""
    if key == "brand":
        return ("brand", list(cat.brands).index(value))
    if key == "line":
        for bi, lines in enumerate(cat.brands.values()):
            if value in lines:
                return ("line", bi, lines.index(value))
        raise ValueError(f"unknown product line {value!r} for category {cat.name!r}")
    table = {"color": cat.colors, "occasion": cat.occasions, "audience": cat.audiences}[key]
    return (key, table.index(value))


def _plant_acceptance(catalog: _Catalog, per_query: int = 3) -> None:
    """Overwrite a few products so every acceptance query has ``per_query`` exact matches.

    Uses the first rows of the category that no earlier planting touched, so plantings in
    the same category never overwrite each other.
    """
    used: dict[int, int] = {}
    for constraint in ACCEPTANCE_QUERIES.values():
        ci = [c.name for c in CATEGORIES].index(constraint["category"])
        cat = CATEGORIES[ci]
        start = used.get(ci, 0)
        rows = catalog.rows_by_category[ci][start:start + per_query]
        used[ci] = start + per_query
        for key, value in constraint.items():
            if key == "category":
                continue
            resolved = _attr_index(cat, key, value)
            if resolved[0] == "line":
                catalog.brand[rows] = resolved[1]
                catalog.line[rows] = resolved[2]
            else:
                getattr(catalog, resolved[0])[rows] = resolved[1]


def _render_items(rng: np.random.Generator, catalog: _Catalog) -> pd.DataFrame:
    """Render the catalog's text columns. Returns the items.csv frame (N rows)."""
    n = len(catalog.category)
    brand_names = [list(c.brands) for c in CATEGORIES]
    line_names = [list(c.brands.values()) for c in CATEGORIES]
    titles, descriptions, bullets, brands, colors, categories = [], [], [], [], [], []
    # Noise draws are made up front (vectorised) so the per-row loop only formats strings.
    n_feat = 3
    feat_u = rng.random((n, n_feat))
    missing_desc = rng.random(n) < 0.03
    missing_bullets = rng.random(n) < 0.02
    shout = rng.random(n) < 0.02
    marketing = np.where(rng.random(n) < 0.03, rng.integers(0, len(_MARKETING_NOISE), n), -1)
    for i in range(n):
        ci = catalog.category[i]
        cat = CATEGORIES[ci]
        brand = brand_names[ci][catalog.brand[i]]
        line = line_names[ci][catalog.brand[i]][catalog.line[i]]
        color = cat.colors[catalog.color[i]]
        aud = cat.audiences[catalog.audience[i]] if catalog.audience[i] >= 0 else ""
        occ = cat.occasions[catalog.occasion[i]] if catalog.occasion[i] >= 0 else ""
        spec = cat.specs[catalog.spec[i]] if catalog.spec[i] >= 0 else ""
        shown_brand = brand.upper() if shout[i] else brand
        title = f"{shown_brand} {line} {cat.title_word}"
        if spec:
            title += f", {spec}"
        if aud:
            title += f" for {aud.title()}"
        elif occ:
            title += f" for {occ.title()}"
        title += f" - {color}"
        if marketing[i] >= 0:
            title += f" {_MARKETING_NOISE[marketing[i]]}"
        feats = [cat.features[int(u * len(cat.features))] for u in feat_u[i]]
        feats = list(dict.fromkeys(feats))  # drop repeats, keep order (deterministic)
        desc = f"The {brand} {line} {cat.title_word.lower()} in {color.lower()}"
        desc += f", ideal for {occ}." if occ else "."
        desc += f" Features {feats[0]}."
        titles.append(title)
        descriptions.append("" if missing_desc[i] else desc)
        bullets.append("" if missing_bullets[i] else "; ".join(f.capitalize() for f in feats))
        brands.append(brand)
        colors.append(color)
        categories.append(cat.name)
    return pd.DataFrame({
        "item_id": [f"P{i:06d}" for i in range(n)],
        "title": titles,
        "description": descriptions,
        "bullet_points": bullets,
        "brand": brands,
        "color": colors,
        "category": categories,
        "price": np.round(catalog.price, 2),
    })


def _exact_mask(catalog: _Catalog, ci: int, constraint: dict) -> np.ndarray:
    """Boolean mask over ``rows_by_category[ci]``: products satisfying every constraint.

    ``constraint`` holds resolved attribute indices (``brand``, ``line`` as (brand, line),
    ``color``, ``audience``, ``occasion``) and/or ``max_price`` in dollars.
    """
    rows = catalog.rows_by_category[ci]
    mask = np.ones(len(rows), bool)
    for key, value in constraint.items():
        if key == "max_price":
            mask &= catalog.price[rows] <= value
        elif key == "line":
            mask &= (catalog.brand[rows] == value[0]) & (catalog.line[rows] == value[1])
        else:
            mask &= getattr(catalog, key)[rows] == value
    return mask


def _price_caps(cat: Category) -> list[int]:
    """Round "under $X" thresholds (dollars) that fall inside the category's price range."""
    caps = (20, 25, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500)
    lo, hi = cat.price
    return [c for c in caps if lo + 0.15 * (hi - lo) <= c <= lo + 0.8 * (hi - lo)]


_PRICE_CAPS = {cat.name: _price_caps(cat) for cat in CATEGORIES}


def _sample_query(rng: np.random.Generator, catalog: _Catalog) -> tuple[str, int, dict, dict]:
    """Draw one query from a random anchor product, so it always has an exact match.

    Returns (text, category index, exact constraint, complement constraint); the
    complement constraint is {} unless the query asks for an accessory of another category
    (then it holds "category" and optional attribute constraints for that category).
    """
    ci = int(rng.integers(0, len(CATEGORIES)))
    cat = CATEGORIES[ci]
    rows = catalog.rows_by_category[ci]
    anchor = rows[int(rng.integers(0, len(rows)))]
    b, ln = int(catalog.brand[anchor]), int(catalog.line[anchor])
    brand = list(cat.brands)[b].lower()
    color = cat.colors[int(catalog.color[anchor])].lower()
    phrase = cat.name if rng.random() < 0.75 else cat.aliases[int(rng.integers(0, len(cat.aliases)))]
    kind = rng.random()

    if cat.accessory_for is not None and kind < 0.35:
        # "charger for <device>": every charger of this kind is exact, the device a complement.
        target = _CATEGORY_BY_NAME[cat.accessory_for]
        tci = CATEGORIES.index(target)
        if target.models_queryable and rng.random() < 0.5:
            tb = int(rng.integers(0, len(target.brands)))
            tlines = list(target.brands.values())[tb]
            tl = int(rng.integers(0, len(tlines)))
            return (f"{_ACCESSORY_WORD} {tlines[tl].lower()}", ci, {},
                    {"category": tci, "line": (tb, tl)})
        device = [target.name, *target.aliases][int(rng.integers(0, 1 + len(target.aliases)))]
        return f"{_ACCESSORY_WORD} {device}", ci, {}, {"category": tci}
    if cat.models_queryable and kind < 0.25:
        model = list(cat.brands.values())[b][ln].lower()
        text = model if rng.random() < 0.6 else f"{brand} {model}"
        return text, ci, {"line": (b, ln)}, {}
    if kind < 0.32:
        return f"best {phrase}", ci, {}, {}
    if kind < 0.38:
        lo, hi = cat.price
        cap = lo + 0.3 * (hi - lo)
        return f"cheap {phrase}", ci, {"max_price": cap}, {}

    # Free composition: [color] [brand] <category> [for audience|occasion] [under $X].
    constraint: dict = {}
    words = []
    if rng.random() < 0.4:
        words.append(color)
        constraint["color"] = int(catalog.color[anchor])
    if rng.random() < 0.5:
        words.append(brand)
        constraint["brand"] = b
    words.append(phrase)
    aud, occ = int(catalog.audience[anchor]), int(catalog.occasion[anchor])
    u = rng.random()
    if aud >= 0 and u < 0.3:
        words.append(f"for {cat.audiences[aud]}")
        constraint["audience"] = aud
    elif occ >= 0 and u < 0.6:
        words.append(f"for {cat.occasions[occ]}")
        constraint["occasion"] = occ
    caps = [c for c in _PRICE_CAPS[cat.name] if c >= catalog.price[anchor]]
    if caps and rng.random() < 0.15:
        words.append(f"under {caps[0]}")
        constraint["max_price"] = float(caps[0])
    return " ".join(words), ci, constraint, {}


def _add_noise(rng: np.random.Generator, text: str) -> str:
    """A typo (two adjacent letters swapped) or an extra word; returns ``text`` unchanged
    when the noise would change which category the query names (keeps labels truthful)."""
    words = text.split()
    if rng.random() < 0.5:
        long_words = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
        if not long_words:
            return text
        wi = long_words[int(rng.integers(0, len(long_words)))]
        w = words[wi]
        k = int(rng.integers(0, len(w) - 1))
        words[wi] = w[:k] + w[k + 1] + w[k] + w[k + 2:]
    else:
        extra = _QUERY_NOISE_WORDS[int(rng.integers(0, len(_QUERY_NOISE_WORDS)))]
        words = [extra, *words] if rng.random() < 0.5 else [*words, extra]
    noisy = " ".join(words)
    return noisy if expected_category(noisy) == expected_category(text) else text


def _resolve_acceptance(constraint: dict[str, str]) -> tuple[int, dict]:
    """Acceptance constraint (display strings) -> (category index, resolved constraint)."""
    cat = _CATEGORY_BY_NAME[constraint["category"]]
    resolved: dict = {}
    for key, value in constraint.items():
        if key == "category":
            continue
        r = _attr_index(cat, key, value)
        resolved[r[0]] = (r[1], r[2]) if r[0] == "line" else r[1]
    return CATEGORIES.index(cat), resolved


def _judge(rng: np.random.Generator, catalog: _Catalog, ci: int, constraint: dict,
           complement: dict) -> tuple[list[int], list[int], list[int], list[int]]:
    """Pick judged products for one query.

    Returns row indices (exact, substitute, irrelevant, complement): 2-5 exact and up to
    3-8 relevant in total, 1-3 irrelevant from categories that are neither this one nor
    one of its complements, and 1-2 complements for accessory queries (0-1 otherwise).
    """
    rows = catalog.rows_by_category[ci]
    mask = _exact_mask(catalog, ci, constraint)
    exact_pool, sub_pool = rows[mask], rows[~mask]
    n_rel = int(rng.integers(3, 9))
    n_exact = min(len(exact_pool), int(rng.integers(2, 6)), n_rel)
    n_sub = min(len(sub_pool), n_rel - n_exact)
    exact = rng.choice(exact_pool, n_exact, replace=False).tolist()
    sub = rng.choice(sub_pool, n_sub, replace=False).tolist() if n_sub else []

    cat = CATEGORIES[ci]
    related = {cat.name, *cat.complements}
    if cat.accessory_for:
        related.add(cat.accessory_for)
    others = [i for i, c in enumerate(CATEGORIES) if c.name not in related]
    irr = []
    for _ in range(int(rng.integers(1, 4))):
        oc = others[int(rng.integers(0, len(others)))]
        orows = catalog.rows_by_category[oc]
        irr.append(int(orows[int(rng.integers(0, len(orows)))]))

    comp: list[int] = []
    if complement:
        cci = complement["category"]
        cmask = _exact_mask(catalog, cci, {k: v for k, v in complement.items() if k != "category"})
        pool = catalog.rows_by_category[cci][cmask]
        if len(pool):
            comp = rng.choice(pool, min(len(pool), int(rng.integers(1, 3))), replace=False).tolist()
    elif cat.complements and rng.random() < 0.3:
        cci = CATEGORIES.index(_CATEGORY_BY_NAME[cat.complements[0]])
        crows = catalog.rows_by_category[cci]
        comp = [int(crows[int(rng.integers(0, len(crows)))])]
    return exact, sub, irr, comp


def _acceptance_complement(ci: int) -> dict:
    """Complement constraint for an acceptance query (the device for a charger query)."""
    target = CATEGORIES[ci].accessory_for
    return {"category": CATEGORIES.index(_CATEGORY_BY_NAME[target])} if target else {}


def generate_shop(out_dir: str, products: int = 2000, queries: int = 3000, seed: int = 0) -> dict:
    """Write the synth-shop dataset (items.csv, interactions.csv, complements.csv) to ``out_dir``.

    ``products`` catalog rows and ``queries`` distinct query strings (the
    :data:`ACCEPTANCE_QUERIES` included). Returns counts:
    ``{"items", "queries", "interactions", "exact", "substitute", "irrelevant",
    "complements", "paraphrases", "categories"}``. Raises ValueError when the sizes are too small for the
    planted structure or when ``queries`` distinct queries cannot be drawn.
    """
    min_products = 10 * len(CATEGORIES)
    if products < min_products:
        raise ValueError(f"products must be >= {min_products} (10 per category), got {products}")
    if queries < len(ACCEPTANCE_QUERIES):
        raise ValueError(f"queries must be >= {len(ACCEPTANCE_QUERIES)} "
                         f"(the acceptance queries), got {queries}")
    rng = np.random.default_rng(seed)
    catalog = _sample_catalog(rng, products)
    _plant_acceptance(catalog)
    items = _render_items(rng, catalog)

    planned: dict[str, tuple[int, dict, dict]] = {}
    for text, constraint in ACCEPTANCE_QUERIES.items():
        ci, resolved = _resolve_acceptance(constraint)
        planned[text] = (ci, resolved, _acceptance_complement(ci))
    # Each attempt yields a valid query; attempts only fail on duplicates, so the cap just
    # stops an impossible request (far more queries than the vocabulary allows) from spinning.
    max_attempts = 50 * queries
    attempts = 0
    while len(planned) < queries:
        if attempts >= max_attempts:
            raise ValueError(f"could only draw {len(planned)} distinct queries out of "
                             f"{queries} requested; lower `queries`")
        attempts += 1
        text, ci, constraint, complement = _sample_query(rng, catalog)
        if rng.random() < 0.06:
            text = _add_noise(rng, text)
        # Duplicates are checked first: they are the common rejection and the cheaper test.
        if text in planned:
            continue
        if not _exact_mask(catalog, ci, constraint).any():
            continue  # e.g. "cheap X" when the anchor itself is not cheap and nothing else is
        planned[text] = (ci, constraint, complement)

    rows_q: list[str] = []
    rows_i: list[int] = []
    rows_e: list[str] = []
    comp_q: list[str] = []
    comp_i: list[int] = []
    for text, (ci, constraint, complement) in planned.items():
        exact, sub, irr, comp = _judge(rng, catalog, ci, constraint, complement)
        for kind, picked in (("exact", exact), ("substitute", sub), ("irrelevant", irr)):
            rows_q += [text] * len(picked)
            rows_i += picked
            rows_e += [kind] * len(picked)
        comp_q += [text] * len(comp)
        comp_i += comp

    item_ids = items["item_id"].to_numpy()
    esci = np.array(rows_e)
    interactions = pd.DataFrame({
        "query": rows_q,
        "item_id": item_ids[np.array(rows_i, np.int64)],
        "label": np.where(esci == "irrelevant", 0, 1),
        "esci": esci,
    })
    # An irrelevant draw can repeat within a query; one judgement per (query, item) pair.
    interactions = interactions.drop_duplicates(["query", "item_id"], ignore_index=True)
    complements = pd.DataFrame({"query": comp_q,
                                "item_id": item_ids[np.array(comp_i, np.int64)]})
    complements = complements.drop_duplicates(ignore_index=True)

    os.makedirs(out_dir, exist_ok=True)
    items.to_csv(os.path.join(out_dir, "items.csv"), index=False)
    interactions.to_csv(os.path.join(out_dir, "interactions.csv"), index=False)
    complements.to_csv(os.path.join(out_dir, "complements.csv"), index=False)
    from datagen.shop_paraphrases import paraphrase_table

    paraphrases = paraphrase_table(planned)  # held out: no interaction, no training query's words
    paraphrases.to_csv(os.path.join(out_dir, PARAPHRASES_FILE), index=False)
    counts = interactions["esci"].value_counts()
    return {
        "items": len(items),
        "queries": len(planned),
        "interactions": len(interactions),
        "exact": int(counts.get("exact", 0)),
        "substitute": int(counts.get("substitute", 0)),
        "irrelevant": int(counts.get("irrelevant", 0)),
        "complements": len(complements),
        "paraphrases": len(paraphrases),
        "categories": len(CATEGORIES),
    }
