"""Reference data: the merchant dimension, FX rates and country codes, loaded from the committed CSVs.

Both files live in `configs/reference/` (paths from `settings.pipeline.merchants` / `fx_rates`)
and are loaded into plain dicts the generator and the ingest worker's enrichment share:

    ref = load_reference(settings)
    ref.merchants["M000001"]  # Merchant(name, category, segment, country, currency)
    ref.fx_rates["JPY"]       # FxRate(rate=0.0061, exponent=0)
    "DE" in ref.countries     # ISO 3166-1 alpha-2 (settings.pipeline.rules.countries)

`merchants.csv` lists merchants in popularity order: the generator gives row 1 the
highest Zipf weight. The files are made by `python -m pipelines.contracts.reference` from a fixed
seed, so regenerating them gives byte-identical files (a test checks that). `countries.csv` is
not generated: it is ISO 3166-1 as Debian's iso-codes 4.15 ships it (the data pycountry bundles).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from pipelines.errors import ConfigError

if TYPE_CHECKING:
    from pipelines.config import Settings

MERCHANT_COLUMNS = ("merchant_id", "name", "category", "segment", "country", "currency")
FX_COLUMNS = ("currency", "rate_to_reporting", "minor_units")
COUNTRY_COLUMNS = ("country", "name")
SEGMENTS = ("small", "mid", "enterprise")

# ISO 18245 merchant category codes the synthetic merchants use, with their descriptions.
CATEGORY_NAMES: dict[str, str] = {
    "5411": "Grocery stores, supermarkets",
    "5812": "Restaurants",
    "5814": "Fast food",
    "5999": "Miscellaneous retail",
    "5311": "Department stores",
    "5651": "Clothing stores",
    "4111": "Local commuter transport",
    "4121": "Taxicabs and rideshare",
    "5541": "Service stations (fuel)",
    "5732": "Electronics stores",
    "7011": "Hotels and lodging",
    "4511": "Airlines",
    "5912": "Drug stores and pharmacies",
    "6011": "ATM cash disbursements",
    "7832": "Cinemas",
}


class Merchant(NamedTuple):
    name: str
    category: str
    segment: str
    country: str
    currency: str


class FxRate(NamedTuple):
    rate: float
    """Units of the reporting currency per one unit of this currency."""
    exponent: int
    """ISO 4217 minor units: amount_minor / 10**exponent is the amount in major units."""


@dataclass(frozen=True)
class ReferenceData:
    merchants: dict[str, Merchant]
    fx_rates: dict[str, FxRate]
    reporting_currency: str
    countries: frozenset[str]


def load_reference(settings: Settings) -> ReferenceData:
    """Both files of the configuration, cross-checked. Raises `ConfigError` naming file and line."""
    merchants_path = settings.resolve(settings.pipeline.merchants)
    fx_path = settings.resolve(settings.pipeline.fx_rates)
    merchants = load_merchants(merchants_path)
    fx_rates = load_fx_rates(fx_path)
    reporting = settings.pipeline.reporting_currency
    if reporting not in fx_rates:
        raise ConfigError(
            f"{fx_path}: no rate for the reporting currency {reporting}",
            hint=f"add a line '{reporting},1.0,2' or change pipeline.reporting_currency",
        )
    if fx_rates[reporting].rate != 1.0:
        raise ConfigError(
            f"{fx_path}: the reporting currency {reporting} has rate {fx_rates[reporting].rate}, expected 1.0",
            hint="rates are to the reporting currency, so its own rate must be 1.0",
        )
    for line, (merchant_id, merchant) in enumerate(merchants.items(), start=2):
        if merchant.currency not in fx_rates:
            raise ConfigError(
                f"{merchants_path}, line {line}: merchant {merchant_id} has currency {merchant.currency}, "
                f"which has no rate in {fx_path}",
                hint=f"add a rate for {merchant.currency} to {fx_path.name}",
            )
    countries_path = settings.resolve(settings.pipeline.rules.countries)
    countries = load_countries(countries_path)
    for line, (merchant_id, merchant) in enumerate(merchants.items(), start=2):
        if merchant.country not in countries:
            raise ConfigError(
                f"{merchants_path}, line {line}: merchant {merchant_id} is in country {merchant.country!r}, "
                f"which is not in {countries_path}",
                hint="fix the merchant's country, or add the code to the countries file",
            )
    return ReferenceData(
        merchants=merchants, fx_rates=fx_rates, reporting_currency=reporting, countries=frozenset(countries)
    )


_MERCHANT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MCC = re.compile(r"^\d{4}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


def _rows(path: Path, columns: tuple[str, ...]) -> list[tuple[int, list[str]]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header) != columns:
                raise ConfigError(
                    f"{path}, line 1: header is {','.join(header or [])!r}, expected {','.join(columns)!r}",
                    hint="fix the header line",
                )
            rows = []
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != len(columns):
                    raise ConfigError(
                        f"{path}, line {reader.line_num}: {len(row)} fields, expected {len(columns)} "
                        f"({','.join(columns)})",
                        hint="quote values that contain commas",
                    )
                rows.append((reader.line_num, [v.strip() for v in row]))
            return rows
    except FileNotFoundError:
        raise ConfigError(
            f"reference file {path} does not exist",
            hint=(
                "check pipeline.merchants / pipeline.fx_rates / pipeline.rules.countries, "
                "or regenerate with `python -m pipelines.contracts.reference`"
            ),
        ) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"cannot read reference file {path}: {exc}") from None


def load_merchants(path: Path) -> dict[str, Merchant]:
    """merchant_id → Merchant, in file (popularity) order."""
    merchants: dict[str, Merchant] = {}
    for line, (merchant_id, name, category, segment, country, currency) in _rows(path, MERCHANT_COLUMNS):
        where = f"{path}, line {line}"
        if not _MERCHANT_ID.match(merchant_id):
            raise ConfigError(f"{where}: merchant_id {merchant_id!r} is not 1–64 letters, digits, '_' or '-'")
        if merchant_id in merchants:
            raise ConfigError(f"{where}: merchant_id {merchant_id} appears twice", hint="ids must be unique")
        if not name:
            raise ConfigError(f"{where}: merchant {merchant_id} has an empty name")
        if not _MCC.match(category):
            raise ConfigError(f"{where}: category {category!r} is not a 4-digit ISO 18245 MCC")
        if segment not in SEGMENTS:
            raise ConfigError(f"{where}: segment {segment!r} is not one of {', '.join(SEGMENTS)}")
        if not _COUNTRY.match(country):
            raise ConfigError(f"{where}: country {country!r} is not an ISO 3166-1 alpha-2 code (e.g. DE)")
        if not _CURRENCY.match(currency):
            raise ConfigError(f"{where}: currency {currency!r} is not an ISO 4217 code (e.g. EUR)")
        merchants[merchant_id] = Merchant(name, category, segment, country, currency)
    if not merchants:
        raise ConfigError(f"{path}: no merchants", hint="regenerate it with `python -m pipelines.contracts.reference`")
    return merchants


def load_countries(path: Path) -> dict[str, str]:
    """ISO 3166-1 alpha-2 code → English short name, the codes the contract's country rule accepts."""
    countries: dict[str, str] = {}
    for line, (code, name) in _rows(path, COUNTRY_COLUMNS):
        where = f"{path}, line {line}"
        if not _COUNTRY.match(code):
            raise ConfigError(f"{where}: country {code!r} is not an ISO 3166-1 alpha-2 code (two capitals, e.g. DE)")
        if code in countries:
            raise ConfigError(f"{where}: country {code} appears twice")
        countries[code] = name
    if not countries:
        raise ConfigError(f"{path}: no countries", hint="restore configs/reference/countries.csv from git")
    return countries


def load_fx_rates(path: Path) -> dict[str, FxRate]:
    """currency → FxRate(rate to the reporting currency, minor-unit exponent)."""
    rates: dict[str, FxRate] = {}
    for line, (currency, rate_text, exponent_text) in _rows(path, FX_COLUMNS):
        where = f"{path}, line {line}"
        if not _CURRENCY.match(currency):
            raise ConfigError(f"{where}: currency {currency!r} is not an ISO 4217 code (e.g. EUR)")
        if currency in rates:
            raise ConfigError(f"{where}: currency {currency} appears twice")
        try:
            rate = float(rate_text)
        except ValueError:
            raise ConfigError(f"{where}: rate_to_reporting {rate_text!r} is not a number") from None
        if not rate > 0 or rate == float("inf"):
            raise ConfigError(f"{where}: rate_to_reporting of {currency} must be a positive number, got {rate_text}")
        try:
            exponent = int(exponent_text)
        except ValueError:
            raise ConfigError(f"{where}: minor_units {exponent_text!r} is not an integer") from None
        if not 0 <= exponent <= 4:
            raise ConfigError(f"{where}: minor_units of {currency} must be 0–4, got {exponent}")
        rates[currency] = FxRate(rate, exponent)
    if not rates:
        raise ConfigError(f"{path}: no FX rates")
    return rates


# Illustrative rates to EUR (units of EUR per unit of currency), and ISO 4217 exponents.
_FX_TABLE = [
    ("EUR", "1.0", 2),
    ("USD", "0.92", 2),
    ("GBP", "1.17", 2),
    ("CHF", "1.04", 2),
    ("SEK", "0.087", 2),
    ("PLN", "0.23", 2),
    ("JPY", "0.0061", 0),
]

# country → (home currency, share of merchants)
_COUNTRIES = {
    "DE": ("EUR", 0.20), "FR": ("EUR", 0.13), "NL": ("EUR", 0.07), "ES": ("EUR", 0.07), "IT": ("EUR", 0.06),
    "IE": ("EUR", 0.03), "AT": ("EUR", 0.03), "BE": ("EUR", 0.03), "PT": ("EUR", 0.02), "FI": ("EUR", 0.02),
    "GB": ("GBP", 0.12), "US": ("USD", 0.08), "CH": ("CHF", 0.04), "SE": ("SEK", 0.04), "PL": ("PLN", 0.04),
    "JP": ("JPY", 0.02),
}  # fmt: skip

# category → (share of merchants, name stems, name suffixes)
_CATEGORY_NAMING: dict[str, tuple[float, list[str], list[str]]] = {
    "5411": (0.16, ["Fresh", "Green", "Corner", "Daily", "Harvest", "Village", "Family", "Urban"],
             ["Market", "Grocers", "Foods", "Supermarket", "Provisions"]),
    "5812": (0.16, ["Olive", "Copper", "Saffron", "Juniper", "Harbour", "Linden", "Bistro", "Maple"],
             ["Kitchen", "Brasserie", "Trattoria", "Grill", "Table", "Dining"]),
    "5814": (0.07, ["Quick", "Golden", "Street", "Urban", "Happy", "Crispy"],
             ["Burger", "Bites", "Noodles", "Wraps", "Pizza"]),
    "5999": (0.08, ["Nordic", "Atlas", "Bright", "Pioneer", "Summit", "Vista"],
             ["Goods", "Trading", "Store", "Supplies", "Emporium"]),
    "5311": (0.03, ["Grand", "Central", "Royal", "Metro"],
             ["Department Store", "Galleria", "Warenhaus"]),
    "5651": (0.06, ["Velvet", "Indigo", "Thread", "Linen", "Cotton"],
             ["Apparel", "Fashion", "Outfitters", "Boutique"]),
    "4111": (0.02, ["City", "Metro", "Regional", "Urban"],
             ["Transit", "Rail", "Bus Lines", "Mobility"]),
    "4121": (0.03, ["Swift", "Yellow", "Blue", "Night"],
             ["Cabs", "Rides", "Taxi", "Mobility"]),
    "5541": (0.07, ["Highway", "Alpine", "Coastal", "Union", "Star"],
             ["Fuel", "Petrol", "Energy", "Service Station"]),
    "5732": (0.04, ["Pixel", "Volt", "Circuit", "Quantum", "Ion"],
             ["Electronics", "Tech", "Digital", "Gadgets"]),
    "7011": (0.06, ["Riverside", "Park", "Alpine", "Harbour", "Palace", "Garden"],
             ["Hotel", "Suites", "Inn", "Resort", "Lodge"]),
    "4511": (0.01, ["Euro", "Sky", "Atlantic", "Nordic", "Alpine"],
             ["Airways", "Air", "Airlines", "Jet"]),
    "5912": (0.06, ["Care", "Well", "Vital", "Green Cross", "Health"],
             ["Pharmacy", "Apotheke", "Chemist", "Drugstore"]),
    "6011": (0.05, ["Union", "Citizens", "Merchant", "Savings", "Cooperative"],
             ["Bank ATM", "Cash Point", "ATM Network"]),
    "7832": (0.04, ["Odeon", "Lumiere", "Starlight", "Roxy", "Majestic"],
             ["Cinema", "Cinemas", "Pictures", "Kino"]),
}  # fmt: skip

REFERENCE_SEED = 20240607
MERCHANT_COUNT = 2000


def build_merchant_rows(count: int = MERCHANT_COUNT, seed: int = REFERENCE_SEED) -> list[list[str]]:
    """Deterministic synthetic merchants, most popular first (segment follows popularity)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    categories = list(_CATEGORY_NAMING)
    cat_p = np.array([_CATEGORY_NAMING[c][0] for c in categories])
    countries = list(_COUNTRIES)
    country_p = np.array([_COUNTRIES[c][1] for c in countries])
    cat_idx = rng.choice(len(categories), size=count, p=cat_p / cat_p.sum())
    country_idx = rng.choice(len(countries), size=count, p=country_p / country_p.sum())
    rows: list[list[str]] = []
    used: set[str] = set()
    for i in range(count):
        category = categories[int(cat_idx[i])]
        country = countries[int(country_idx[i])]
        _, stems, suffixes = _CATEGORY_NAMING[category]
        stem = stems[int(rng.integers(len(stems)))]
        suffix = suffixes[int(rng.integers(len(suffixes)))]
        name = f"{stem} {suffix}"
        if name in used:  # keep names readable but distinct: "Fresh Market DE-7"
            name = f"{name} {country}-{i + 1}"
        used.add(name)
        # The head of the Zipf distribution are the big merchants.
        rank = i / count
        segment = "enterprise" if rank < 0.02 else "mid" if rank < 0.15 else "small"
        rows.append([f"M{i + 1:06d}", name, category, segment, country, _COUNTRIES[country][0]])
    return rows


def write_reference_files(directory: Path) -> tuple[Path, Path]:
    """(Re)write merchants.csv and fx_rates.csv in `directory`; the output depends on nothing else."""
    directory.mkdir(parents=True, exist_ok=True)
    merchants_path = directory / "merchants.csv"
    fx_path = directory / "fx_rates.csv"
    with merchants_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(MERCHANT_COLUMNS)
        writer.writerows(build_merchant_rows())
    with fx_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(FX_COLUMNS)
        writer.writerows(_FX_TABLE)
    return merchants_path, fx_path


if __name__ == "__main__":
    from pipelines.config import PACKAGE_ROOT

    for written in write_reference_files(PACKAGE_ROOT / "configs" / "reference"):
        print(f"wrote {written}")
