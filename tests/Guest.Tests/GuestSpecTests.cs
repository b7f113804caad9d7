using SEmigrate.Guest.Qemu;

namespace SEmigrate.Guest.Tests;

public class GuestSpecTests
{
    [Fact]
    public void Parses_process_specs_and_rejects_bad_ones()
    {
        Assert.Equal(new GuestProcess("vaultdb", 16, "SECRET"), GuestProcess.Parse("vaultdb:16:SECRET"));
        Assert.Equal("free:tmp:2:X", GuestProcess.Parse("tmp:2:X", freed: true).KitArgument);
        foreach (var bad in new[] { "a:b:c", "name:16", "way-too-long-process-name:1:X", "x:0:M", "x:1:has space", "x;rm:1:M" })
        {
            Assert.Throws<FormatException>(() => GuestProcess.Parse(bad));
        }
    }

    [Theory]
    [InlineData("256M", 256)]
    [InlineData("4G", 4096)]
    [InlineData("512", 512)]
    public void Parses_memory_sizes(string text, int mib) => Assert.Equal(mib, QemuGuest.ParseMemoryMiB(text));

    [Theory]
    [InlineData("32M")]
    [InlineData("lots")]
    [InlineData("-1G")]
    public void Rejects_bad_memory_sizes(string text) => Assert.Throws<FormatException>(() => QemuGuest.ParseMemoryMiB(text));

    [Fact]
    public void Ground_truth_parses_the_serial_log_and_refuses_an_unfinished_one()
    {
        var log = "noise\r\nGT-BEGIN\nGT-PFNS 84 vaultdb 3\nGT-PFN 84 1a 2b\nGT-PFN 84 3c\nGT-ZONE DMA 3808\nGT-RELEASE 6.1.0\nGT-END\n";
        var truth = GroundTruth.Parse(log);
        Assert.Equal("6.1.0", truth.Release);
        Assert.Equal([0x1aUL, 0x2b, 0x3c], Assert.Single(truth.Processes).Pfns);
        Assert.Equal(new GroundTruthZone("DMA", 3808), Assert.Single(truth.Zones));
        Assert.Throws<InvalidDataException>(() => GroundTruth.Parse("GT-BEGIN\nGT-PFNS 1 a 1\n"));
        Assert.Throws<InvalidDataException>(() => GroundTruth.Parse("GT-PFNS 1 a 2\nGT-PFN 1 5\nGT-END\n"));
    }
}
