// Tests for the CSV reader: the one quoting rule, the number syntax, the label column and the
// errors that name a line and column.
#include "common/dataio/csv.h"

#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

namespace dropnet::dataio {
namespace {

using Fields = std::vector<std::string>;

CsvTable Read(const std::string& text, const CsvOptions& options = {}) {
  std::istringstream in(text);
  return ReadCsv(in, options);
}

std::string ErrorOf(const std::string& text, const CsvOptions& options = {}) {
  try {
    Read(text, options);
  } catch (const DataError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected DataError for: " << text;
  return "";
}

TEST(SplitCsvLineTest, QuotesCommasAndDoubledQuotes) {
  EXPECT_EQ(SplitCsvLine("a,b,c"), (Fields{"a", "b", "c"}));
  EXPECT_EQ(SplitCsvLine("\"a,b\",c"), (Fields{"a,b", "c"}));
  EXPECT_EQ(SplitCsvLine("\"say \"\"hi\"\"\",x"), (Fields{"say \"hi\"", "x"}));
  EXPECT_EQ(SplitCsvLine("\"\""), (Fields{""}));
  EXPECT_EQ(SplitCsvLine(""), (Fields{""}));
  EXPECT_EQ(SplitCsvLine("a,,"), (Fields{"a", "", ""}));
}

TEST(SplitCsvLineTest, TrimsBlanksAndDropsCarriageReturns) {
  EXPECT_EQ(SplitCsvLine(" a ,\tb\t, c\r"), (Fields{"a", "b", "c"}));
  EXPECT_EQ(SplitCsvLine("1,2\r"), (Fields{"1", "2"}));
  // Inside quotes a carriage return is part of the field.
  EXPECT_EQ(SplitCsvLine("\"x\ry\",z"), (Fields{"x\ry", "z"}));
}

TEST(ParseFloatTest, TheWholeFieldIsOneNumber) {
  float v = 0;
  EXPECT_TRUE(ParseFloat("1.5", &v));
  EXPECT_EQ(v, 1.5f);
  EXPECT_TRUE(ParseFloat("-3e2", &v));
  EXPECT_EQ(v, -300.0f);
  EXPECT_TRUE(ParseFloat("6e-1", &v));
  EXPECT_EQ(v, 0.6f);
  for (const char* bad : {"", "abc", "1 2", "1,5", "1.5x", "+1", " 1", "0x10"}) {
    EXPECT_FALSE(ParseFloat(bad, &v)) << bad;
  }
}

TEST(ReadCsvTest, AllNumbersWithoutALabelColumn) {
  const CsvTable t = Read("a,b\n1,2\n\n 3 ,\"4\"\r\n");
  EXPECT_EQ(t.header, (Fields{"a", "b"}));
  EXPECT_EQ(t.feature_names, t.header);
  EXPECT_EQ(t.label_index, CsvTable::kNoLabel);
  EXPECT_EQ(t.rows, 2);
  EXPECT_EQ(t.values, (std::vector<float>{1, 2, 3, 4}));
  EXPECT_TRUE(t.labels.empty());
}

TEST(ReadCsvTest, LabelColumnByNameOrLast) {
  CsvOptions by_name;
  by_name.label_column = "y";
  CsvTable t = Read("a,y,b\n1,cat,2\n3,,4\n", by_name);
  EXPECT_EQ(t.header, (Fields{"a", "y", "b"}));
  EXPECT_EQ(t.feature_names, (Fields{"a", "b"}));
  EXPECT_EQ(t.label_index, 1u);
  EXPECT_EQ(t.values, (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(t.labels, (Fields{"cat", ""}));  // kAny: anything goes, an empty field too

  CsvOptions last;
  last.last_is_label = true;
  t = Read("a,b,label\n1,2,0\n", last);
  EXPECT_EQ(t.label_index, 2u);
  EXPECT_EQ(t.feature_names, (Fields{"a", "b"}));
  EXPECT_EQ(t.labels, (Fields{"0"}));

  // A header without rows is an empty table; what that means is the caller's to say.
  EXPECT_EQ(Read("a,b\n").rows, 0);
}

TEST(ReadCsvTest, LabelRules) {
  CsvOptions present;
  present.last_is_label = true;
  present.label_rule = LabelRule::kPresent;
  std::string e = ErrorOf("a,label\n1,cat\n2,\n", present);
  EXPECT_NE(e.find("line 3, column 2 (label) is missing"), std::string::npos) << e;

  CsvOptions number = present;
  number.label_rule = LabelRule::kFiniteNumber;
  EXPECT_EQ(Read("a,y\n1,0.5\n", number).labels, (Fields{"0.5"}));
  e = ErrorOf("a,y\n1,0.5\n2,nan\n", number);
  EXPECT_NE(e.find("'nan' at line 3, column 2 (y) is not a finite number"), std::string::npos) << e;
}

TEST(ReadCsvTest, ErrorsNameLineAndColumn) {
  std::string e = ErrorOf("a,b\n1,2\n3,abc\n");
  EXPECT_NE(e.find("'abc' at line 3, column 2 (b)"), std::string::npos) << e;
  e = ErrorOf("a,b\n1,inf\n");
  EXPECT_NE(e.find("line 2, column 2"), std::string::npos) << e;
  e = ErrorOf("a,b\n1,2\n3\n");
  EXPECT_NE(e.find("CSV line 3 has 1 fields, the header has 2"), std::string::npos) << e;
  e = ErrorOf("");
  EXPECT_NE(e.find("empty"), std::string::npos) << e;
  CsvOptions missing;
  missing.label_column = "missing";
  e = ErrorOf("a,b\n1,2\n", missing);
  EXPECT_NE(e.find("no column named 'missing'"), std::string::npos) << e;
  // A label column needs another column beside it.
  CsvOptions last;
  last.last_is_label = true;
  EXPECT_FALSE(ErrorOf("label\n1\n", last).empty());
}

}  // namespace
}  // namespace dropnet::dataio
