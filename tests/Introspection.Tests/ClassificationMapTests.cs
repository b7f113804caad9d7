using SEmigrate.Contracts;
using SEmigrate.Introspection.Classification;

namespace SEmigrate.Introspection.Tests;

public sealed class ClassificationMapTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("semigrate-map-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    private static ClassificationMap Sample()
    {
        var classes = new byte[1001];
        for (var i = 0; i < classes.Length; i++)
        {
            classes[i] = (byte)(i % 7 == 0 ? ClassificationMap.NotGuest : i % 3);
        }
        return new ClassificationMap(classes);
    }

    [Fact]
    public void Round_trips_through_a_file_of_two_bits_a_page()
    {
        var map = Sample();
        var path = Path.Combine(dir, "classes.map");
        map.Save(path);
        Assert.Equal(40 + (1001 + 3) / 4, new FileInfo(path).Length);
        var back = ClassificationMap.Load(path);
        Assert.Equal((map.Zero, map.Plain, map.Sealed, map.PfnLimit), (back.Zero, back.Plain, back.Sealed, back.PfnLimit));
        for (var pfn = 0UL; pfn < map.PfnLimit; pfn++)
        {
            Assert.Equal(map.IsGuestPage(pfn), back.IsGuestPage(pfn));
            if (map.IsGuestPage(pfn))
            {
                Assert.Equal(map[pfn], back[pfn]);
            }
        }
        Assert.Equal(PageClass.Plain, back[1]);
        Assert.Throws<ArgumentOutOfRangeException>(() => back[7]);
    }

    [Fact]
    public void A_tampered_or_foreign_file_is_refused()
    {
        var path = Path.Combine(dir, "classes.map");
        Sample().Save(path);
        var bytes = File.ReadAllBytes(path);
        bytes[^10] ^= 0b01; // one page changes class: the header's counts no longer match
        File.WriteAllBytes(path, bytes);
        Assert.Contains("do not add up", Assert.Throws<InvalidDataException>(() => ClassificationMap.Load(path)).Message, StringComparison.Ordinal);
        File.WriteAllBytes(path, bytes[..100]);
        Assert.Throws<InvalidDataException>(() => ClassificationMap.Load(path));
        File.WriteAllText(path, "hello");
        Assert.Throws<InvalidDataException>(() => ClassificationMap.Load(path));
    }
}
