"""Column names, defined once and passed around."""

USER_ID = "user_id"
ISBN = "isbn"
RATING = "rating"

TITLE = "title"
AUTHOR = "author"
YEAR = "year"
PUBLISHER = "publisher"
IMAGE_S = "image_url_s"
IMAGE_M = "image_url_m"
IMAGE_L = "image_url_l"

LOCATION = "location"
CITY = "city"
REGION = "region"
COUNTRY = "country"
AGE = "age"

BOOK_COLUMNS = [ISBN, TITLE, AUTHOR, YEAR, PUBLISHER, IMAGE_S, IMAGE_M, IMAGE_L]
USER_COLUMNS = [USER_ID, LOCATION, CITY, REGION, COUNTRY, AGE]
RATING_COLUMNS = [USER_ID, ISBN, RATING]

# The columns each file kind loads into (its table's, in COPY order).
TARGET_COLUMNS = {"books": BOOK_COLUMNS, "ratings": RATING_COLUMNS, "users": USER_COLUMNS}
