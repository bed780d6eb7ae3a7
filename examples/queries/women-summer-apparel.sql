-- Women's summer clothing: the brief's example.
SELECT id, article_type, base_colour
FROM products
WHERE master_category = 'Apparel' AND gender = 'Women' AND season = 'Summer'
