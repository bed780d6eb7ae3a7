-- Accessories for a labelling task: watches and handbags in every colour.
SELECT id, article_type, base_colour
FROM products
WHERE article_type IN ('Watches', 'Handbags')
