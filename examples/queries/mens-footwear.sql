-- Men's shoes, sandals and flip flops with a photo, newest first.
SELECT p.id, p.article_type, p.year
FROM products AS p
JOIN product_images AS i ON i.id = p.id
WHERE p.master_category = 'Footwear' AND p.gender = 'Men'
ORDER BY p.year DESC, p.id
