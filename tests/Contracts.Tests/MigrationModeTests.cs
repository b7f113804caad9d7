namespace SEmigrate.Contracts.Tests;

public class MigrationModeTests
{
    [Theory]
    [InlineData("semigrate", MigrationMode.Semigrate)]
    [InlineData("allenc", MigrationMode.AllEnc)]
    [InlineData("NoEnc", MigrationMode.NoEnc)]
    public void Parses_wire_names_case_insensitively(string name, MigrationMode expected) =>
        Assert.Equal(expected, MigrationModes.Parse(name));

    [Fact]
    public void Every_mode_round_trips_through_its_wire_name()
    {
        foreach (var mode in Enum.GetValues<MigrationMode>())
        {
            Assert.Equal(mode, MigrationModes.Parse(mode.ToWireName()));
        }
        Assert.Equal(Enum.GetValues<MigrationMode>().Select(m => m.ToWireName()), MigrationModes.WireNames);
    }

    [Fact]
    public void Unknown_name_is_a_clear_error_listing_the_valid_ones()
    {
        var e = Assert.Throws<FormatException>(() => MigrationModes.Parse("aes-ecb"));
        Assert.Contains("'aes-ecb'", e.Message, StringComparison.Ordinal);
        Assert.Contains("semigrate, allenc, noenc", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Page_class_values_are_pinned_wire_format() =>
        Assert.Equal([0, 1, 2], new[] { PageClass.Zero, PageClass.Plain, PageClass.Sealed }.Select(c => (int)c));
}
