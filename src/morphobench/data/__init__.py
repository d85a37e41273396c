"""Data model and loaders: every source (simulated, JUMP, RxRx, BBBC) becomes the same image sheet."""

from morphobench.data.tables import (  # noqa: F401
    CHANNELS,
    JUMP_CHANNEL_NUMBERS,
    PLATE_MAP_REQUIRED,
    SITE_KEYS,
    WELL_KEYS,
    feature_columns,
    filename_col,
    metadata_columns,
    parse_well,
    pathname_col,
    sheet_channels,
    validate_image_sheet,
    validate_plate_map,
    validate_profiles,
    well_name,
)
